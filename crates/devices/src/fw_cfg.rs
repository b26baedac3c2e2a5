//! QEMU's firmware configuration device (fw_cfg) at x86 I/O ports 0x510-0x51b: the
//! interface SeaBIOS (and Linux's qemu_fw_cfg driver) read the VM's configuration
//! through: numbered items (signature, feature bits, RAM size, CPU count, ...) and named
//! files (`etc/e820`, `bootorder`, `etc/sercon-port`, the ACPI table loader, ...) listed in
//! a file directory.
//!
//! Ports, as QEMU's x86 machines place them (docs/specs/fw_cfg.rst in QEMU):
//! - 0x510, selector (16-bit little-endian write): chooses an item and rewinds its offset;
//! - 0x511, data (byte reads): the selected item's next byte, zero past its end;
//! - 0x514 and 0x518, DMA address (big-endian high and low halves; writing the low half
//!   starts the transfer). Reading 0x514 gives the DMA signature "QEMU CFG".
//!
//! A DMA access is a big-endian `{control: u32, length: u32, address: u64}` in guest
//! memory: control bit 3 selects the item in its top 16 bits, then bit 1 reads `length`
//! bytes of it to `address` (zeros past its end), bit 2 skips them; the device writes
//! control back as 0, or with bit 0 (error) set when the access failed (guest memory out
//! of range, a write request: items are read-only here). Every transfer is bounded by the
//! guest's memory and goes through vm-memory's checked accessors.
//!
//! Written by hand: no maintained crate provides a fw_cfg device for an x86 VMM (crosvm's
//! lives inside its device crate with its own bus and memory types).

use crate::bus::{BusDevice, DeviceAction};
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The first port (the selector).
pub const FW_CFG_PORT: u64 = 0x510;
/// Ports the device covers (selector, data, DMA address).
pub const FW_CFG_PORT_LEN: u64 = 0x0c;

/// Item keys of the items the device itself provides or that firmware expects.
pub mod keys {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bits (u32 LE): 1 = the traditional interface, 2 = DMA.
    pub const ID: u16 = 0x01;
    /// Guest RAM size in bytes (u64 LE; SeaBIOS prefers `etc/e820`).
    pub const RAM_SIZE: u16 = 0x03;
    /// Non-zero when there is no graphical console (u16 LE).
    pub const NOGRAPHIC: u16 = 0x04;
    /// vCPUs present at boot (u16 LE).
    pub const NB_CPUS: u16 = 0x05;
    /// Boot menu enabled (u16 LE).
    pub const BOOT_MENU: u16 = 0x0e;
    /// Most vCPUs (u16 LE).
    pub const MAX_CPUS: u16 = 0x0f;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// The first key given to a named file.
    pub const FILE_FIRST: u16 = 0x20;
}

/// Most named files (QEMU's default slot count for current machine types).
pub const MAX_FILES: usize = 0x1000 - keys::FILE_FIRST as usize;
/// Longest file name in bytes (the directory holds 56 with the terminating NUL).
pub const MAX_FILE_NAME: usize = 55;

const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
const FEATURE_TRADITIONAL: u32 = 1;
const FEATURE_DMA: u32 = 2;

/// DMA control bits.
const DMA_ERROR: u32 = 1;
const DMA_READ: u32 = 2;
const DMA_SKIP: u32 = 4;
const DMA_SELECT: u32 = 8;
const DMA_WRITE: u32 = 0x10;

/// Bytes copied to guest memory at a time.
const CHUNK: usize = 64 << 10;

/// Why an item or file could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, too long or holds a NUL.
    #[error("fw_cfg file name {0:?} is empty, longer than 55 bytes or holds a NUL")]
    BadName(String),
    /// A file of that name exists.
    #[error("fw_cfg file {0:?} is added twice")]
    Duplicate(String),
    /// No file slot is left.
    #[error("fw_cfg has no file slot left for {0:?}")]
    Full(String),
    /// The key belongs to the device (signature, ID, file directory) or to files.
    #[error("fw_cfg item {0:#x} is reserved")]
    ReservedKey(u16),
}

/// The items and files of a device to build.
#[derive(Debug, Default, Clone)]
pub struct FwCfgBuilder {
    items: BTreeMap<u16, Arc<[u8]>>,
    files: BTreeMap<String, Arc<[u8]>>,
}

impl FwCfgBuilder {
    /// No items yet (the signature, feature bits and file directory are added by
    /// [`FwCfgBuilder::build`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A numbered item, e.g. [`keys::NB_CPUS`] with `2u16.to_le_bytes()`.
    pub fn item(&mut self, key: u16, data: impl Into<Arc<[u8]>>) -> Result<&mut Self, FwCfgError> {
        if matches!(key, keys::SIGNATURE | keys::ID | keys::FILE_DIR) || key >= keys::FILE_FIRST {
            return Err(FwCfgError::ReservedKey(key));
        }
        self.items.insert(key, data.into());
        Ok(self)
    }

    /// A named file, e.g. `etc/sercon-port`. The directory lists files sorted by name,
    /// as QEMU's does.
    pub fn file(
        &mut self,
        name: &str,
        data: impl Into<Arc<[u8]>>,
    ) -> Result<&mut Self, FwCfgError> {
        if name.is_empty() || name.len() > MAX_FILE_NAME || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full(name.into()));
        }
        self.files.insert(name.into(), data.into());
        Ok(self)
    }

    /// The device; DMA transfers go to `mem`.
    pub fn build(&self, mem: GuestMemoryMmap) -> FwCfg {
        let mut items = self.items.clone();
        items.insert(keys::SIGNATURE, Arc::from(&b"QEMU"[..]));
        let id = FEATURE_TRADITIONAL | FEATURE_DMA;
        items.insert(keys::ID, Arc::from(&id.to_le_bytes()[..]));
        let mut dir = Vec::with_capacity(4 + 64 * self.files.len());
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (i, (name, data)) in self.files.iter().enumerate() {
            // At most MAX_FILES files: the key stays below 0x1000.
            let key = keys::FILE_FIRST + i as u16;
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; 56];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
            items.insert(key, data.clone());
        }
        items.insert(keys::FILE_DIR, Arc::from(dir));
        FwCfg {
            items,
            selected: None,
            offset: 0,
            dma_high: 0,
            mem,
            dma_transfers: 0,
            dma_errors: 0,
        }
    }
}

/// The fw_cfg device.
pub struct FwCfg {
    items: BTreeMap<u16, Arc<[u8]>>,
    /// The selected item (None: a key nobody provides; reads give zeros).
    selected: Option<Arc<[u8]>>,
    offset: usize,
    dma_high: u32,
    mem: GuestMemoryMmap,
    /// DMA accesses handled.
    pub dma_transfers: u64,
    /// DMA accesses that failed.
    pub dma_errors: u64,
}

impl FwCfg {
    fn select(&mut self, key: u16) {
        // Bit 14 (the write channel) is not part of the key. Bit 15 is: it selects the
        // architecture-local items (0x8000 ACPI tables, 0x8001 SMBIOS, 0x8003 e820 on
        // x86), a separate set Kiln does not provide, so they read as empty (zeros).
        self.selected = self.items.get(&(key & !0x4000)).cloned();
        self.offset = 0;
    }

    fn read_data(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self
                .selected
                .as_ref()
                .and_then(|d| d.get(self.offset).copied())
                .unwrap_or(0);
            self.offset = self.offset.saturating_add(1);
        }
    }

    /// Run the DMA access described at `at`; returns the control word to write back.
    fn dma(&mut self, at: GuestAddress) -> Option<u32> {
        let mut raw = [0u8; 16];
        self.mem.read_slice(&mut raw, at).ok()?;
        let control = u32::from_be_bytes(raw[0..4].try_into().ok()?);
        let length = u32::from_be_bytes(raw[4..8].try_into().ok()?) as usize;
        let address = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        if control & DMA_WRITE != 0 {
            return Some(DMA_ERROR);
        }
        if control & DMA_READ != 0 {
            return Some(if self.dma_read(address, length) {
                0
            } else {
                DMA_ERROR
            });
        }
        if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length);
        }
        Some(0)
    }

    /// Copy `length` bytes of the selected item (zeros past its end) to guest `address`.
    fn dma_read(&mut self, address: u64, length: usize) -> bool {
        let zeros = [0u8; CHUNK];
        let mut done = 0usize;
        while done < length {
            let n = (length - done).min(CHUNK);
            let data = self.selected.as_ref().map_or(&[][..], |d| &d[..]);
            let from = self.offset.min(data.len());
            let to = self.offset.saturating_add(n).min(data.len());
            let mut src = data[from..to].to_vec();
            src.extend_from_slice(&zeros[..n - src.len()]);
            let Some(dst) = address.checked_add(done as u64) else {
                return false;
            };
            if self.mem.write_slice(&src, GuestAddress(dst)).is_err() {
                return false;
            }
            self.offset = self.offset.saturating_add(n);
            done += n;
        }
        true
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            1 => self.read_data(data),
            4..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = DMA_SIGNATURE
                        .get(offset as usize - 4 + i)
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (4, 4) => self.dma_high = u32::from_be_bytes(data.try_into().ok()?),
            (8, 4) => {
                let low = u32::from_be_bytes(data.try_into().ok()?);
                let at = GuestAddress(u64::from(self.dma_high) << 32 | u64::from(low));
                self.dma_transfers += 1;
                match self.dma(at) {
                    Some(control) => {
                        if control != 0 {
                            self.dma_errors += 1;
                        }
                        // The access lies in guest memory (it was just read from there).
                        let _ = self.mem.write_slice(&control.to_be_bytes(), at);
                    }
                    None => self.dma_errors += 1,
                }
            }
            // Data-port writes (items are read-only) and odd widths are ignored.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn device() -> FwCfg {
        let mut b = FwCfgBuilder::new();
        b.item(keys::NB_CPUS, &2u16.to_le_bytes()[..]).unwrap();
        b.file("etc/sercon-port", &0x3f8u16.to_le_bytes()[..])
            .unwrap();
        b.file("bootorder", &b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n"[..])
            .unwrap();
        b.build(mem())
    }

    fn select(d: &mut FwCfg, key: u16) {
        d.write(0, &key.to_le_bytes());
    }

    fn read_item(d: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        select(d, key);
        let mut out = vec![0u8; len];
        for b in &mut out {
            let mut one = [0u8];
            d.read(1, &mut one);
            *b = one[0];
        }
        out
    }

    #[test]
    fn arch_local_keys_are_their_own_empty_items() {
        // SeaBIOS reads 0x8000 (legacy ACPI tables) and trusts the count it finds there:
        // it must not alias the signature at key 0.
        let mut d = device();
        assert_eq!(read_item(&mut d, 0x8000, 4), [0, 0, 0, 0]);
        assert_eq!(read_item(&mut d, 0x8001, 2), [0, 0]);
        assert_eq!(
            read_item(&mut d, 0x4000, 4),
            b"QEMU",
            "bit 14 is the write flag"
        );
    }

    /// The directory as (name, key, size).
    fn directory(d: &mut FwCfg) -> Vec<(String, u16, u32)> {
        let count = u32::from_be_bytes(read_item(d, keys::FILE_DIR, 4).try_into().unwrap());
        let raw = read_item(d, keys::FILE_DIR, 4 + 64 * count as usize);
        raw[4..]
            .chunks(64)
            .map(|e| {
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let key = u16::from_be_bytes([e[4], e[5]]);
                let name = e[8..].split(|b| *b == 0).next().unwrap();
                (String::from_utf8(name.to_vec()).unwrap(), key, size)
            })
            .collect()
    }

    #[test]
    fn signature_features_items_and_zeros_past_the_end() {
        let mut d = device();
        assert_eq!(read_item(&mut d, keys::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut d, keys::ID, 4), 3u32.to_le_bytes());
        assert_eq!(read_item(&mut d, keys::NB_CPUS, 4), [2, 0, 0, 0]);
        assert_eq!(
            read_item(&mut d, 0x1234, 2),
            [0, 0],
            "unknown key reads zeros"
        );
        // The write-channel bit is not part of the key.
        assert_eq!(read_item(&mut d, 0x4000 | keys::NB_CPUS, 2), [2, 0]);
        let mut sig = [0u8; 4];
        d.read(4, &mut sig);
        let mut rest = [0u8; 4];
        d.read(8, &mut rest);
        assert_eq!([sig, rest].concat(), b"QEMU CFG");
    }

    #[test]
    fn directory_lists_files_sorted_with_their_keys() {
        let mut d = device();
        let dir = directory(&mut d);
        assert_eq!(
            dir,
            vec![
                ("bootorder".to_string(), 0x20, 34),
                ("etc/sercon-port".to_string(), 0x21, 2)
            ]
        );
        assert_eq!(read_item(&mut d, 0x21, 2), 0x3f8u16.to_le_bytes());
    }

    fn dma(d: &mut FwCfg, at: u64, control: u32, length: u32, address: u64) -> u32 {
        let mut raw = Vec::new();
        raw.extend_from_slice(&control.to_be_bytes());
        raw.extend_from_slice(&length.to_be_bytes());
        raw.extend_from_slice(&address.to_be_bytes());
        d.mem.write_slice(&raw, GuestAddress(at)).unwrap();
        d.write(4, &((at >> 32) as u32).to_be_bytes());
        d.write(8, &(at as u32).to_be_bytes());
        let mut back = [0u8; 4];
        d.mem.read_slice(&mut back, GuestAddress(at)).unwrap();
        u32::from_be_bytes(back)
    }

    #[test]
    fn dma_select_skip_and_read_with_zero_fill() {
        let mut d = device();
        d.mem
            .write_slice(&[0xaa; 64], GuestAddress(0x2000))
            .unwrap();
        let sel = |k: u16| u32::from(k) << 16 | DMA_SELECT;
        // Select bootorder, skip 5 bytes, read 40 (29 of data, then 11 zeros).
        assert_eq!(dma(&mut d, 0x1000, sel(0x20) | DMA_SKIP, 5, 0), 0);
        assert_eq!(dma(&mut d, 0x1000, DMA_READ, 40, 0x2000), 0);
        let mut got = [0u8; 41];
        d.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got[..29], &b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n"[5..]);
        assert_eq!(&got[29..40], &[0u8; 11]);
        assert_eq!(got[40], 0xaa, "nothing past the length");
        assert_eq!((d.dma_transfers, d.dma_errors), (2, 0));
    }

    #[test]
    fn hostile_dma_fails_the_access_only() {
        let mut d = device();
        let sel = |k: u16| u32::from(k) << 16 | DMA_SELECT;
        // A destination beyond guest memory, a huge length running off its end, a write
        // request, an address that wraps: each reports an error, nothing panics.
        assert_eq!(
            dma(&mut d, 0x1000, sel(0x20) | DMA_READ, 16, 1 << 40),
            DMA_ERROR
        );
        assert_eq!(
            dma(&mut d, 0x1000, sel(0x20) | DMA_READ, u32::MAX, 0x8_0000),
            DMA_ERROR
        );
        assert_eq!(
            dma(&mut d, 0x1000, sel(0x20) | DMA_WRITE, 4, 0x3000),
            DMA_ERROR
        );
        assert_eq!(
            dma(&mut d, 0x1000, sel(0x20) | DMA_READ, 16, u64::MAX - 4),
            DMA_ERROR
        );
        // A descriptor outside guest memory: counted, nothing written anywhere.
        d.write(4, &1u32.to_be_bytes());
        d.write(8, &0u32.to_be_bytes());
        assert_eq!((d.dma_transfers, d.dma_errors), (5, 5));
        // The device still works.
        assert_eq!(
            dma(&mut d, 0x1000, sel(keys::SIGNATURE) | DMA_READ, 4, 0x2000),
            0
        );
        let mut sig = [0u8; 4];
        d.mem.read_slice(&mut sig, GuestAddress(0x2000)).unwrap();
        assert_eq!(&sig, b"QEMU");
    }

    #[test]
    fn builder_refuses_bad_names_duplicates_and_reserved_keys() {
        let mut b = FwCfgBuilder::new();
        assert!(matches!(b.file("", &[][..]), Err(FwCfgError::BadName(_))));
        assert!(matches!(
            b.file(&"x".repeat(56), &[][..]),
            Err(FwCfgError::BadName(_))
        ));
        b.file(&"x".repeat(55), &[][..]).unwrap();
        assert!(matches!(
            b.file(&"x".repeat(55), &[][..]),
            Err(FwCfgError::Duplicate(_))
        ));
        for key in [
            keys::SIGNATURE,
            keys::ID,
            keys::FILE_DIR,
            keys::FILE_FIRST,
            0x4000,
        ] {
            assert_eq!(
                b.item(key, &[][..]).err(),
                Some(FwCfgError::ReservedKey(key))
            );
        }
    }
}
