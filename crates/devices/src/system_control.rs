//! Port 0x92, the PC's "system control port A" (fast A20 and fast reset). KVM has no A20
//! masking, so the A20 bit always reads as enabled; writing bit 0 resets the machine, as
//! on hardware. Firmware reads the port around every switch between real and protected
//! mode, so without this device each read would count as an unknown access (and reads of
//! all-ones written back would set the reset bit).

use crate::bus::{BusDevice, DeviceAction};

/// The port.
pub const SYSTEM_CONTROL_PORT: u64 = 0x92;
const FAST_RESET: u8 = 1;
const A20_ENABLED: u8 = 2;

/// System control port A.
#[derive(Debug, Default)]
pub struct SystemControl {
    /// The last value written, without the reset bit.
    pub value: u8,
}

impl BusDevice for SystemControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = (self.value | A20_ENABLED) & !FAST_RESET;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let v = *data.first()?;
        self.value = v & !FAST_RESET;
        (v & FAST_RESET != 0).then_some(DeviceAction::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_reads_enabled_and_bit_0_resets() {
        let mut p = SystemControl::default();
        let mut d = [0u8];
        p.read(0, &mut d);
        assert_eq!(d[0], 0x02);
        // The read-modify-write firmware does to enable A20 does not reset.
        assert_eq!(p.write(0, &[d[0] | 0x02]), None);
        assert_eq!(p.write(0, &[0x00]), None);
        p.read(0, &mut d);
        assert_eq!(d[0], 0x02, "A20 stays on");
        assert_eq!(p.write(0, &[0x03]), Some(DeviceAction::Reset));
    }
}
