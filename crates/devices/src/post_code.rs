//! Port 0x80, the POST-code port: firmware and kernels write progress codes (and Linux
//! uses it for I/O delays). Kiln accepts every write silently and remembers the last
//! code; reads return it.

use crate::bus::{BusDevice, DeviceAction};

/// The port.
pub const POST_CODE_PORT: u64 = 0x80;

/// The POST-code sink.
#[derive(Debug, Default)]
pub struct PostCode {
    /// The last byte written.
    pub last: u8,
    /// How many writes were seen.
    pub writes: u64,
}

impl BusDevice for PostCode {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        self.last = data.first().copied().unwrap_or(0);
        self.writes += 1;
        None
    }
}
