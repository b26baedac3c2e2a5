//! A minimal i8042 keyboard controller: enough for `reboot=k` (command 0xFE, or an output
//! port write with the reset line low) and for code that polls its status. No keyboard is
//! attached; reads of the data port return 0 and the status says both buffers are empty.

use crate::bus::{BusDevice, DeviceAction};

/// The data port.
pub const DATA_PORT: u64 = 0x60;
/// The status/command port.
pub const COMMAND_PORT: u64 = 0x64;
/// Ports decoded, from [`DATA_PORT`] (0x60-0x64; 0x61 and 0x62/0x63 read as 0).
pub const PORTS: u64 = 5;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
const CMD_PULSE_RESET: u8 = 0xFE;
const STATUS_OUTPUT_FULL: u8 = 1;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;

/// The controller's state.
#[derive(Debug, Default)]
pub struct I8042 {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Byte waiting in the output buffer.
    pub output: Option<u8>,
    /// The command whose data byte is expected next.
    pub pending: Option<u8>,
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset + DATA_PORT {
            DATA_PORT => self.output.take().unwrap_or(0),
            COMMAND_PORT => {
                STATUS_SYSTEM_FLAG
                    | if self.output.is_some() {
                        STATUS_OUTPUT_FULL
                    } else {
                        0
                    }
            }
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let v = *data.first()?;
        match offset + DATA_PORT {
            COMMAND_PORT => match v {
                CMD_READ_CTR => self.output = Some(self.ctr),
                CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(v),
                CMD_SELF_TEST => self.output = Some(0x55),
                CMD_PULSE_RESET => return Some(DeviceAction::Reset),
                _ => {}
            },
            DATA_PORT => match self.pending.take() {
                Some(CMD_WRITE_CTR) => self.ctr = v,
                Some(CMD_WRITE_OUTPUT_PORT) if v & 1 == 0 => return Some(DeviceAction::Reset),
                _ => {}
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_and_output_port_reset() {
        let mut k = I8042::default();
        assert_eq!(k.write(4, &[0xFE]), Some(DeviceAction::Reset));
        assert_eq!(k.write(4, &[0xD1]), None);
        assert_eq!(k.write(0, &[0xFE]), Some(DeviceAction::Reset));
        k.write(4, &[0x60]);
        k.write(0, &[0x47]);
        k.write(4, &[0x20]);
        let mut d = [0u8];
        k.read(4, &mut d);
        assert_eq!(d[0] & 1, 1, "output full");
        k.read(0, &mut d);
        assert_eq!(d[0], 0x47);
    }
}
