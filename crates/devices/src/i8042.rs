//! A minimal i8042 keyboard controller: enough for `reboot=k` (command 0xFE, or an output
//! port write with the reset line low) and for firmware that polls it. The controller
//! answers its self and interface tests, and a keyboard that never sends keys answers its
//! commands (acknowledge, reset with a passed self-test, identify as an MF2 keyboard), so
//! a BIOS finds it at once instead of waiting out its timeouts. No interrupts are raised:
//! answers are read by polling the status register.

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
const CMD_INTERFACE_TEST: u8 = 0xAB;
const CMD_AUX_TEST: u8 = 0xA9;
const CMD_WRITE_AUX: u8 = 0xD4;
const KBD_ACK: u8 = 0xFA;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
const CMD_PULSE_RESET: u8 = 0xFE;
const STATUS_OUTPUT_FULL: u8 = 1;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;

/// The controller's state.
#[derive(Debug, Default)]
pub struct I8042 {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Bytes waiting for the output buffer (at most a few: every command answers at
    /// most three bytes, and the queue is cut at [`MAX_OUTPUT`]).
    pub output: std::collections::VecDeque<u8>,
    /// The controller command whose data byte is expected next.
    pub pending: Option<u8>,
    /// The keyboard command whose parameter byte is expected next.
    pub kbd_pending: Option<u8>,
}

/// Most bytes queued for the guest; a guest that never reads cannot grow the queue.
pub const MAX_OUTPUT: usize = 16;

impl I8042 {
    fn answer(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.output.len() < MAX_OUTPUT {
                self.output.push_back(b);
            }
        }
    }

    /// A byte written to the keyboard.
    fn keyboard(&mut self, v: u8) {
        if self.kbd_pending.take().is_some() {
            // The parameter of LED / typematic / scancode-set commands.
            self.answer(&[KBD_ACK]);
            return;
        }
        match v {
            0xFF => self.answer(&[KBD_ACK, 0xAA]), // reset: self-test passed
            0xF2 => self.answer(&[KBD_ACK, 0xAB, 0x83]), // identify: MF2 keyboard
            0xEE => self.answer(&[0xEE]),          // echo
            0xED | 0xF0 | 0xF3 => {
                self.kbd_pending = Some(v);
                self.answer(&[KBD_ACK]);
            }
            _ => self.answer(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset + DATA_PORT {
            DATA_PORT => self.output.pop_front().unwrap_or(0),
            COMMAND_PORT => {
                STATUS_SYSTEM_FLAG
                    | if !self.output.is_empty() {
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
                CMD_READ_CTR => self.answer(&[self.ctr]),
                CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_AUX => self.pending = Some(v),
                CMD_SELF_TEST => {
                    self.output.clear();
                    self.answer(&[0x55]);
                }
                CMD_INTERFACE_TEST => self.answer(&[0x00]),
                // No mouse: the auxiliary port's test reports a clock line stuck low.
                CMD_AUX_TEST => self.answer(&[0x01]),
                CMD_PULSE_RESET => return Some(DeviceAction::Reset),
                _ => {}
            },
            DATA_PORT => match self.pending.take() {
                Some(CMD_WRITE_CTR) => self.ctr = v,
                Some(CMD_WRITE_OUTPUT_PORT) if v & 1 == 0 => return Some(DeviceAction::Reset),
                Some(CMD_WRITE_OUTPUT_PORT | CMD_WRITE_AUX) => {}
                _ => self.keyboard(v),
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

    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        let mut d = [0u8];
        loop {
            k.read(4, &mut d);
            if d[0] & 1 == 0 {
                return out;
            }
            k.read(0, &mut d);
            out.push(d[0]);
        }
    }

    #[test]
    fn a_bios_finds_controller_and_keyboard() {
        let mut k = I8042::default();
        k.write(4, &[0xAA]);
        assert_eq!(drain(&mut k), [0x55]);
        k.write(4, &[0xAB]);
        assert_eq!(drain(&mut k), [0x00]);
        k.write(0, &[0xFF]);
        assert_eq!(drain(&mut k), [0xFA, 0xAA]);
        k.write(0, &[0xF2]);
        assert_eq!(drain(&mut k), [0xFA, 0xAB, 0x83]);
        k.write(0, &[0xED]);
        k.write(0, &[0x07]);
        assert_eq!(drain(&mut k), [0xFA, 0xFA], "LED command and its parameter");
        k.write(4, &[0xD4]);
        k.write(0, &[0xFF]);
        assert_eq!(drain(&mut k), [], "bytes for the missing mouse vanish");
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let mut k = I8042::default();
        for _ in 0..10_000 {
            k.write(0, &[0xF2]);
        }
        assert_eq!(k.output.len(), MAX_OUTPUT);
    }
}
