//! MSI-X: the capability in configuration space, the vector table and the pending-bit
//! array (PBA) a device exposes in one of its BARs.
//!
//! Each vector owns a GSI (allocated by the VMM) and an eventfd. While the vector is
//! unmasked (MSI-X enabled, function not masked, vector not masked) the eventfd is a KVM
//! irqfd for the GSI, which is routed to the vector's message; the device's threads write
//! the eventfd and KVM delivers the MSI without any exit. Masking detaches the irqfd, so
//! later writes accumulate in the eventfd: that count is the vector's pending bit, and
//! re-attaching on unmask makes KVM deliver it at once.

use super::config_space::ConfigSpace;
use super::host::PciHost;
use std::io;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// The MSI-X capability ID.
pub const CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_BYTES: u64 = 16;
/// Message control: MSI-X enable.
const ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

struct Vector {
    /// Message address low, high, data, vector control, as the guest wrote them.
    entry: [u8; 16],
    gsi: u32,
    irqfd: EventFd,
    attached: bool,
    routed: Option<(u64, u32)>,
}

impl Vector {
    fn word(&self, i: usize) -> u32 {
        u32::from_le_bytes([
            self.entry[4 * i],
            self.entry[4 * i + 1],
            self.entry[4 * i + 2],
            self.entry[4 * i + 3],
        ])
    }
}

/// A device's MSI-X state.
pub struct Msix {
    vectors: Vec<Vector>,
    enabled: bool,
    function_mask: bool,
    cap_offset: usize,
    host: Arc<dyn PciHost>,
    /// Host errors while routing (a vector that could not be attached stays silent).
    pub errors: u64,
}

impl Msix {
    /// One vector per GSI in `gsis`, all masked, MSI-X disabled.
    pub fn new(gsis: &[u32], host: Arc<dyn PciHost>) -> io::Result<Self> {
        let vectors = gsis
            .iter()
            .map(|&gsi| {
                let mut entry = [0u8; 16];
                entry[12] = VECTOR_MASKED as u8;
                Ok(Vector {
                    entry,
                    gsi,
                    irqfd: EventFd::new(libc_flags())?,
                    attached: false,
                    routed: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Msix {
            vectors,
            enabled: false,
            function_mask: false,
            cap_offset: 0,
            host,
            errors: 0,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Add the capability to `config`: the table at `table_offset` and the PBA at
    /// `pba_offset` of BAR `bar`.
    pub fn add_capability(
        &mut self,
        config: &mut ConfigSpace,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) {
        let control = (self.vectors.len() as u16 - 1).to_le_bytes();
        let mut body = vec![CAP_ID, 0, control[0], control[1]];
        body.extend_from_slice(&(table_offset | bar as u32).to_le_bytes());
        body.extend_from_slice(&(pba_offset | bar as u32).to_le_bytes());
        let mut writable = vec![0u8; body.len()];
        writable[3] = 0xc0; // enable and function mask
        self.cap_offset = config.add_capability(&body, &writable);
    }

    /// Whether a configuration write at `offset` of `len` bytes touched the capability.
    pub fn covers(&self, offset: usize, len: usize) -> bool {
        self.cap_offset != 0 && offset < self.cap_offset + 4 && self.cap_offset < offset + len
    }

    /// Re-read message control from `config` after the guest wrote it.
    pub fn control_written(&mut self, config: &ConfigSpace) {
        let at = self.cap_offset + 2;
        let control = u16::from_le_bytes([config.bytes[at], config.bytes[at + 1]]);
        self.enabled = control & ENABLE != 0;
        self.function_mask = control & FUNCTION_MASK != 0;
        for i in 0..self.vectors.len() {
            self.update(i);
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A guest read of the table (`offset` from the table's start).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *d = self
                .vectors
                .get((at / ENTRY_BYTES) as usize)
                .map_or(0, |v| v.entry[(at % ENTRY_BYTES) as usize]);
        }
    }

    /// A guest write of the table.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i as u64;
            let n = (at / ENTRY_BYTES) as usize;
            if let Some(v) = self.vectors.get_mut(n) {
                let k = (at % ENTRY_BYTES) as usize;
                // Only the mask bit of vector control is writable.
                v.entry[k] = match k {
                    12 => b & VECTOR_MASKED as u8,
                    13..=15 => 0,
                    _ => b,
                };
                if touched.last() != Some(&n) {
                    touched.push(n);
                }
            }
        }
        for n in touched {
            self.update(n);
        }
    }

    /// A guest read of the PBA: a bit per vector, set while a masked vector has an
    /// interrupt waiting.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let mut byte = 0u8;
            for bit in 0..8 {
                let n = (offset as usize + i) * 8 + bit;
                if self.vectors.get(n).is_some_and(|v| self.pending(v)) {
                    byte |= 1 << bit;
                }
            }
            *d = byte;
        }
    }

    fn pending(&self, v: &Vector) -> bool {
        if v.attached {
            return false;
        }
        // Peek at the eventfd: take its count and put it back.
        match v.irqfd.read() {
            Ok(n) => {
                let _ = v.irqfd.write(n);
                true
            }
            Err(_) => false,
        }
    }

    /// The eventfd that raises `vector`, for a device thread (`None` for a vector the
    /// device does not have, e.g. VIRTIO_MSI_NO_VECTOR).
    pub fn vector_eventfd(&self, vector: u16) -> Option<EventFd> {
        self.vectors.get(vector as usize)?.irqfd.try_clone().ok()
    }

    /// Back to power-on state: every vector masked and detached, MSI-X disabled.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_mask = false;
        for i in 0..self.vectors.len() {
            let v = &mut self.vectors[i];
            v.entry = [0; 16];
            v.entry[12] = VECTOR_MASKED as u8;
            // Drop anything pending.
            let _ = v.irqfd.read();
            self.update(i);
        }
    }

    /// Attach or detach vector `n`'s irqfd to match its masks and message.
    fn update(&mut self, n: usize) {
        let (enabled, fmask) = (self.enabled, self.function_mask);
        let v = &mut self.vectors[n];
        let masked = !enabled || fmask || v.word(3) & VECTOR_MASKED != 0;
        let mut ok = true;
        if masked {
            if v.attached {
                ok &= self.host.detach_irqfd(&v.irqfd, v.gsi).is_ok();
                v.attached = false;
            }
        } else {
            let msg = ((v.word(1) as u64) << 32 | v.word(0) as u64, v.word(2));
            if v.routed != Some(msg) {
                if self.host.set_msi_route(v.gsi, msg.0, msg.1).is_ok() {
                    v.routed = Some(msg);
                } else {
                    ok = false;
                }
            }
            if !v.attached && v.routed.is_some() {
                v.attached = self.host.attach_irqfd(&v.irqfd, v.gsi).is_ok();
                ok &= v.attached;
            }
        }
        if !ok {
            self.errors += 1;
        }
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        for v in &self.vectors {
            if v.attached {
                let _ = self.host.detach_irqfd(&v.irqfd, v.gsi);
            }
        }
    }
}

fn libc_flags() -> i32 {
    // EFD_NONBLOCK | EFD_CLOEXEC, spelled out to keep libc out of this crate.
    0o4000 | 0o2000000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host::RecordingHost;

    fn log(r: &RecordingHost) -> Vec<String> {
        r.take()
    }

    #[test]
    fn vectors_attach_when_unmasked_and_keep_pending_while_masked() {
        let host = Arc::new(RecordingHost::default());
        let mut m = Msix::new(&[24, 25], host.clone()).unwrap();
        let mut cfg = ConfigSpace::new(0x1af4, 0x1042, 0x01_80_00, 1);
        m.add_capability(&mut cfg, 0, 0x4000, 0x5000);
        let cap = m.cap_offset;
        assert_eq!(cfg.bytes[cap], CAP_ID);
        assert_eq!(cfg.bytes[cap + 2], 1, "table size - 1");
        assert_eq!(&cfg.bytes[cap + 4..cap + 8], &0x4000u32.to_le_bytes());
        // Program vector 1 and unmask it; nothing happens until MSI-X is enabled.
        m.table_write(16, &0xfee0_0000u32.to_le_bytes());
        m.table_write(24, &0x4041u32.to_le_bytes());
        m.table_write(28, &0u32.to_le_bytes());
        assert!(log(&host).is_empty());
        cfg.write(cap + 2, &[0x01, 0x80]);
        assert!(m.covers(cap + 2, 2) && !m.covers(cap + 4, 4));
        m.control_written(&cfg);
        assert_eq!(log(&host), ["route 25 0xfee00000 0x4041", "attach 25"]);
        assert!(m.enabled());
        // Mask it: detached; an interrupt then shows in the PBA until unmasked.
        m.table_write(28, &1u32.to_le_bytes());
        assert_eq!(log(&host), ["detach 25"]);
        let fd = m.vector_eventfd(1).unwrap();
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        fd.write(1).unwrap();
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10, "reading the PBA does not clear it");
        m.table_write(28, &0u32.to_le_bytes());
        assert_eq!(log(&host), ["attach 25"], "same message: no new route");
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        let mut entry = [0u8; 16];
        m.table_read(16, &mut entry);
        assert_eq!(&entry[8..12], &0x4041u32.to_le_bytes());
        // The function mask detaches every attached vector; reset masks all.
        cfg.write(cap + 3, &[0xc0]);
        m.control_written(&cfg);
        assert_eq!(log(&host), ["detach 25"]);
        m.reset();
        assert!(!m.enabled() && log(&host).is_empty());
        assert!(m.vector_eventfd(2).is_none());
        m.table_write(1000, &[1, 2, 3]);
        m.table_read(1000, &mut entry[..3]);
        assert_eq!(&entry[..3], &[0, 0, 0], "beyond the table");
    }
}
