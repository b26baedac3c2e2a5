//! Guest RAM and KVM memory slots.
//!
//! RAM is anonymous host memory mapped once by `vm-memory` (`GuestMemoryMmap`) and handed
//! to KVM slot by slot; nothing copies guest memory. [`MemorySlots`] owns the slot
//! numbers and lets regions be added, removed or made read-only while vCPUs run (for
//! ROMs, BIOS shadowing and BAR moves later).

use crate::error::{Result, VmmError};
use kiln_arch::MemoryLayout;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// The largest piece of guest RAM one KVM slot takes (KVM caps a slot just under 8 TiB).
pub const MAX_SLOT_BYTES: u64 = 4 << 40;

/// Guest memory as the VMM and devices see it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Map guest RAM for `layout`. `phys_bits` is the guest's physical address width.
/// Returns the memory and the mappings behind it, which must outlive every use of it.
pub fn create_guest_memory(
    layout: &MemoryLayout,
    phys_bits: u8,
) -> Result<(GuestMem, RamMappings)> {
    if layout.ram_size == 0 {
        return Err(VmmError::Config(
            "guest memory size must be greater than 0".into(),
        ));
    }
    if !layout.ram_size.is_multiple_of(4096) {
        return Err(VmmError::Config(format!(
            "guest memory size {} is not a multiple of 4 KiB",
            layout.ram_size
        )));
    }
    let limit = 1u128 << phys_bits.min(64);
    if layout.ram_end() as u128 > limit {
        return Err(VmmError::Memory(format!(
            "{} of guest memory does not fit the guest's {phys_bits}-bit physical address space",
            human_size(layout.ram_size)
        )));
    }
    if let Some(host) = host_memory() {
        if layout.ram_size > host {
            return Err(VmmError::Memory(format!(
                "{} of guest memory is more than this host has ({} of RAM and swap)",
                human_size(layout.ram_size),
                human_size(host / (1 << 20) * (1 << 20))
            )));
        }
    }
    let mut mappings = RamMappings(Vec::new());
    let mut regions = Vec::new();
    for r in layout.ram_ranges() {
        let size = (r.end - r.start) as usize;
        let host = mappings.map_aligned(size).map_err(|e| {
            VmmError::Memory(format!(
                "cannot map {} of guest memory on this host: {e}",
                human_size(layout.ram_size)
            ))
        })?;
        // SAFETY: `host` is the start of a live, private, read-write anonymous mapping of
        // exactly `size` bytes that `mappings` owns and unmaps only when dropped, which the
        // VM does after every user of this guest memory is gone (see `RamMappings`).
        let builder = unsafe { MmapRegionBuilder::<()>::new(size).with_raw_mmap_pointer(host) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(RAM_MMAP_FLAGS)
            .build()
            .map_err(|e| VmmError::Memory(format!("guest memory region: {e}")))?;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(r.start))
                .ok_or_else(|| VmmError::Memory("guest memory region overflows".into()))?,
        );
    }
    let mem = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| VmmError::Memory(format!("guest memory layout: {e}")))?;
    Ok((mem, mappings))
}

const RAM_MMAP_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
/// Guest RAM is aligned to this, so that huge pages back guest-physical 2 MiB pages.
pub const RAM_ALIGN: usize = 2 << 20;

/// The host mappings behind guest RAM: anonymous, 2 MiB-aligned and advised for
/// transparent huge pages, so that the host's nested page tables can map guest memory in
/// 2 MiB pages (plain `mmap` gives 4 KiB-aligned memory, and a guest booting Linux then
/// takes tens of thousands of extra nested page faults; measured in the rig: ~29k before,
/// ~600 after). `vm-memory` cannot align its own mappings, so Kiln maps and owns them; they
/// are unmapped when this is dropped.
///
/// Invariant: the `Vm`/`RunningVm` that owns this drops it last, after the KVM VM, the
/// vCPUs and its `GuestMem`; no `GuestMem` clone or VM handle built on these mappings may
/// leave the VM (both accessors are crate-private). Device threads that clone guest
/// memory must be joined before the VM is dropped.
#[derive(Debug)]
pub struct RamMappings(Vec<(usize, usize)>);

impl RamMappings {
    fn map_aligned(&mut self, size: usize) -> std::io::Result<*mut u8> {
        let len = size
            .checked_add(RAM_ALIGN)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches
        // no existing memory; the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                RAM_MMAP_FLAGS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(RAM_ALIGN);
        let head = aligned - start;
        let tail = len - head - size;
        // SAFETY: both ranges lie inside the mapping just made and outside the part kept.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((aligned + size) as *mut libc::c_void, tail);
            }
            // Advice only: without THP support the memory is simply not huge-page backed.
            libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        self.0.push((aligned, size));
        Ok(aligned as *mut u8)
    }
}

impl Drop for RamMappings {
    fn drop(&mut self) {
        for &(addr, len) in &self.0 {
            // SAFETY: each range was mapped by `map_aligned` and is unmapped once, here; the
            // owner drops this only after the guest memory built on it is no longer used.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// The host's RAM plus swap in bytes, from /proc/meminfo. Guest RAM beyond that could
/// never be backed, and KVM's per-slot bookkeeping for it alone could exhaust the host.
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// Bytes of guest RAM resident in host memory (pages the guest or Kiln touched), from
/// /proc/self/smaps. Used to report the VMM's own memory apart from the guest's.
pub fn guest_resident_bytes(mem: &GuestMem) -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let starts: Vec<u64> = mem
        .iter()
        .filter_map(|r| mem.get_host_address(r.start_addr()).ok())
        .map(|p| p as u64)
        .collect();
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = head.split_once('-').filter(|(a, b)| {
            !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
        }) {
            in_guest = u64::from_str_radix(start, 16).is_ok_and(|s| starts.contains(&s));
        } else if in_guest {
            if let Some(kb) = line.strip_prefix("Rss:") {
                total += kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    * 1024;
            }
        }
    }
    total
}

/// A size as people write it (`512 MiB`, `2 GiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

/// One registered KVM memory slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the backing memory.
    pub host_addr: u64,
    /// Guest writes exit to the VMM instead of landing.
    pub readonly: bool,
}

/// The VM's memory slots.
pub struct MemorySlots {
    vm: Arc<VmFd>,
    slots: BTreeMap<u32, Slot>,
    max_slots: u32,
}

impl MemorySlots {
    /// An empty table for `vm`, which accepts `max_slots` slots.
    pub fn new(vm: Arc<VmFd>, max_slots: usize) -> Self {
        MemorySlots {
            vm,
            slots: BTreeMap::new(),
            max_slots: max_slots.min(u16::MAX as usize) as u32,
        }
    }

    fn set(&self, id: u32, slot: &Slot, size: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: id,
            flags: if slot.readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: slot.gpa,
            memory_size: size,
            userspace_addr: slot.host_addr,
        };
        // SAFETY: every slot's host range is a live mapping owned by the VM's guest memory
        // (or a ROM mapping the VM keeps alive) for as long as the slot is registered;
        // removal (size 0) asks KVM to forget the range.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|err| VmmError::Kvm {
            op: "KVM_SET_USER_MEMORY_REGION",
            err,
        })
    }

    /// Register a region. The caller keeps the host mapping alive while it is registered.
    pub fn add(&mut self, slot: Slot) -> Result<u32> {
        if let Some((_, other)) = self
            .slots
            .iter()
            .find(|(_, s)| s.gpa < slot.gpa + slot.size && slot.gpa < s.gpa + s.size)
        {
            return Err(VmmError::Memory(format!(
                "memory region {:#x}+{:#x} overlaps {:#x}+{:#x}",
                slot.gpa, slot.size, other.gpa, other.size
            )));
        }
        let id = (0..self.max_slots)
            .find(|i| !self.slots.contains_key(i))
            .ok_or_else(|| VmmError::Memory("no free KVM memory slot".into()))?;
        self.set(id, &slot, slot.size)?;
        self.slots.insert(id, slot);
        Ok(id)
    }

    /// Unregister a slot.
    pub fn remove(&mut self, id: u32) -> Result<Slot> {
        let slot = *self
            .slots
            .get(&id)
            .ok_or_else(|| VmmError::Memory(format!("no memory slot {id}")))?;
        self.set(id, &slot, 0)?;
        self.slots.remove(&id);
        Ok(slot)
    }

    /// Make a slot read-only or writable again. KVM cannot change that flag in place, so
    /// the slot is removed and added back under the same number.
    pub fn set_readonly(&mut self, id: u32, readonly: bool) -> Result<()> {
        let mut slot = self.remove(id)?;
        slot.readonly = readonly;
        self.set(id, &slot, slot.size)?;
        self.slots.insert(id, slot);
        Ok(())
    }

    /// Register every region of guest RAM, in slots of at most [`MAX_SLOT_BYTES`].
    pub fn add_guest_ram(&mut self, mem: &GuestMem) -> Result<Vec<u32>> {
        self.add_guest_ram_except(mem, None)
    }

    /// Register guest RAM except `hole` (whose slots the caller manages, e.g. the BIOS's
    /// legacy window).
    pub fn add_guest_ram_except(
        &mut self,
        mem: &GuestMem,
        hole: Option<std::ops::Range<u64>>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::Memory(format!("guest RAM has no host mapping: {e}")))?;
            let start = region.start_addr().0;
            let mut off = 0;
            while off < region.len() {
                let mut size = (region.len() - off).min(MAX_SLOT_BYTES);
                if let Some(h) = hole.as_ref() {
                    let here = start + off;
                    if h.contains(&here) {
                        off = (h.end - start).min(region.len());
                        continue;
                    }
                    if here < h.start && h.start < here + size {
                        size = h.start - here;
                    }
                }
                let slot = Slot {
                    gpa: region.start_addr().0 + off,
                    size,
                    host_addr: host as u64 + off,
                    readonly: false,
                };
                ids.push(self.add(slot).map_err(|e| match e {
                    VmmError::Kvm { err, .. } => VmmError::Memory(format!(
                        "KVM refused {} of guest memory at {:#x}: {err}",
                        human_size(size),
                        slot.gpa
                    )),
                    other => other,
                })?);
                off += size;
            }
        }
        Ok(ids)
    }

    /// The registered slots.
    pub fn slots(&self) -> &BTreeMap<u32, Slot> {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }

    #[test]
    fn refuses_zero_and_unaligned() {
        assert!(create_guest_memory(&MemoryLayout::new(0), 46).is_err());
        assert!(create_guest_memory(&MemoryLayout::new(4097), 46).is_err());
        let e = create_guest_memory(&MemoryLayout::new(1 << 40), 36).unwrap_err();
        let (mem, maps) = create_guest_memory(&MemoryLayout::new(6 << 20), 46).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % RAM_ALIGN, 0, "guest RAM is 2 MiB-aligned");
        mem.write_obj(0x1234u32, GuestAddress((6 << 20) - 4))
            .unwrap();
        drop(mem);
        drop(maps);
        assert!(e.to_string().contains("36-bit"), "{e}");
    }
}
