//! Kiln's hardware-reduced ACPI power device: the FADT's sleep control, sleep status and
//! reset registers, as three consecutive I/O ports. Writing `SLP_TYP << 2 | SLP_EN` with
//! the S5 type powers the VM off; writing the reset value resets it.

use crate::bus::{BusDevice, DeviceAction};

/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET_REGISTER: u64 = 2;
/// Sleep enable bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;

/// The power device.
#[derive(Debug)]
pub struct AcpiPm {
    /// SLP_TYP value meaning S5 (soft off), as the DSDT's `\_S5` says.
    pub s5_slp_typ: u8,
    /// The value that resets, as the FADT's RESET_VALUE says.
    pub reset_value: u8,
    /// Last sleep status written (write-1-to-clear bits are simply cleared).
    pub sleep_status: u8,
}

impl AcpiPm {
    /// A device decoding S5 as `s5_slp_typ` and resetting on `reset_value`.
    pub fn new(s5_slp_typ: u8, reset_value: u8) -> Self {
        AcpiPm {
            s5_slp_typ,
            reset_value,
            sleep_status: 0,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS {
            data[0] = self.sleep_status;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let v = *data.first()?;
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 && (v >> 2) & 7 == self.s5_slp_typ => {
                Some(DeviceAction::Poweroff)
            }
            SLEEP_STATUS => {
                self.sleep_status &= !v;
                None
            }
            RESET_REGISTER if v == self.reset_value => Some(DeviceAction::Reset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let mut pm = AcpiPm::new(5, 1);
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]),
            Some(DeviceAction::Poweroff)
        );
        assert_eq!(pm.write(SLEEP_CONTROL, &[5 << 2]), None, "no SLP_EN");
        assert_eq!(
            pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]),
            None,
            "S3 is not supported"
        );
        assert_eq!(pm.write(RESET_REGISTER, &[1]), Some(DeviceAction::Reset));
        assert_eq!(pm.write(RESET_REGISTER, &[2]), None);
    }
}
