//! The classic (fixed-hardware) ACPI power registers of a BIOS-booted PC: the PM1a event
//! block (PM1_STS, write-1-to-clear, and PM1_EN, 16 bits each) and the PM1a control block
//! (PM1_CNT, 16 bits), six consecutive I/O ports. Writing PM1_CNT with SLP_EN (bit 13) and
//! the `\_S5` sleep type in SLP_TYP (bits 10-12) powers the VM off. SCI_EN (bit 0) always
//! reads 1: the platform has no SMI command port and is always in ACPI mode. No event ever
//! sets a status bit (there is no power button), so the SCI is never raised.

use crate::bus::{BusDevice, DeviceAction};

/// Ports decoded: PM1_STS (+0), PM1_EN (+2), PM1_CNT (+4).
pub const PM1_PORTS: u64 = 6;
const CNT: usize = 4;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;

/// The PM1a registers.
#[derive(Debug)]
pub struct AcpiPm1 {
    regs: [u8; PM1_PORTS as usize],
    s5_slp_typ: u16,
}

impl AcpiPm1 {
    /// Registers that power off on SLP_TYP `s5_slp_typ` (the DSDT's `\_S5`).
    pub fn new(s5_slp_typ: u8) -> Self {
        let mut regs = [0u8; PM1_PORTS as usize];
        regs[CNT] = SCI_EN as u8;
        AcpiPm1 {
            regs,
            s5_slp_typ: u16::from(s5_slp_typ & 7),
        }
    }

    fn reg16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.regs[at], self.regs[at + 1]])
    }
}

impl BusDevice for AcpiPm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.regs.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let mut cnt_written = false;
        for (i, &v) in data.iter().enumerate() {
            let at = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))?;
            match at {
                0 | 1 => self.regs[at] &= !v, // PM1_STS: write 1 to clear
                2 | 3 => self.regs[at] = v,
                4 | 5 => {
                    self.regs[at] = v;
                    cnt_written = true;
                }
                _ => {}
            }
        }
        if !cnt_written {
            return None;
        }
        let cnt = self.reg16(CNT);
        // SLP_EN is write-only; SCI_EN stays set.
        self.regs[CNT] |= SCI_EN as u8;
        self.regs[CNT + 1] &= !((SLP_EN >> 8) as u8);
        (cnt & SLP_EN != 0 && (cnt >> 10) & 7 == self.s5_slp_typ).then_some(DeviceAction::Poweroff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm1::new(5);
        let mut d = [0u8; 2];
        pm.read(4, &mut d);
        assert_eq!(u16::from_le_bytes(d) & 1, 1, "SCI_EN reads 1");
        assert_eq!(pm.write(4, &(5u16 << 10).to_le_bytes()), None, "no SLP_EN");
        assert_eq!(
            pm.write(4, &((3u16 << 10) | (1 << 13)).to_le_bytes()),
            None,
            "S3 is not supported"
        );
        assert_eq!(
            pm.write(4, &((5u16 << 10) | (1 << 13) | 1).to_le_bytes()),
            Some(DeviceAction::Poweroff)
        );
        // Byte-wise, high byte last, as some guests write it.
        assert_eq!(pm.write(4, &[1]), None);
        assert_eq!(
            pm.write(5, &[(((5u16 << 10) | (1 << 13)) >> 8) as u8]),
            Some(DeviceAction::Poweroff)
        );
        pm.read(4, &mut d);
        assert_eq!(u16::from_le_bytes(d) & (1 << 13), 0, "SLP_EN reads 0");
    }

    #[test]
    fn status_is_write_one_to_clear_and_wild_offsets_are_ignored() {
        let mut pm = AcpiPm1::new(5);
        pm.regs[0] = 0x21;
        pm.write(0, &[0x01]);
        let mut d = [0u8; 4];
        pm.read(0, &mut d);
        assert_eq!(d[0], 0x20);
        pm.write(2, &[0xff, 0x01]);
        pm.read(2, &mut d[..2]);
        assert_eq!(d[..2], [0xff, 0x01]);
        assert_eq!(pm.write(u64::MAX, &[0xff; 8]), None);
        pm.read(u64::MAX - 1, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
