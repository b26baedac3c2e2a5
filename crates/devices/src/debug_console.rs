//! QEMU's debug console (`isa-debugcon`) at port 0x402, where SeaBIOS writes its log.
//! SeaBIOS only logs there after a read of the port returns 0xe9 (QEMU's read-back value),
//! so the port always answers that; written bytes go to an optional sink (a file the user
//! asked for) and are otherwise counted and dropped. A sink that fails is dropped: the
//! guest never waits on it.

use crate::bus::{BusDevice, DeviceAction};
use std::io::Write;

/// The port SeaBIOS's QEMU build logs to.
pub const DEBUG_CONSOLE_PORT: u64 = 0x402;
/// What a read of the port returns.
pub const READBACK: u8 = 0xe9;

/// The debug console.
#[derive(Default)]
pub struct DebugConsole {
    sink: Option<Box<dyn Write + Send>>,
    /// Bytes written by the guest.
    pub bytes: u64,
}

impl DebugConsole {
    /// A console whose bytes go to `sink` (or nowhere).
    pub fn new(sink: Option<Box<dyn Write + Send>>) -> Self {
        DebugConsole { sink, bytes: 0 }
    }
}

impl BusDevice for DebugConsole {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(READBACK);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        // One byte per access, as on the ISA device; wider writes carry their low byte.
        let &b = data.first()?;
        self.bytes += 1;
        if let Some(sink) = self.sink.as_mut() {
            let ok = sink.write_all(&[b]).is_ok() && (b != b'\n' || sink.flush().is_ok());
            if !ok {
                self.sink = None;
            }
        }
        None
    }
}

impl Drop for DebugConsole {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_back_e9_and_logs_low_bytes() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut d = DebugConsole::new(Some(Box::new(Shared(buf.clone()))));
        let mut r = [0u8; 2];
        d.read(0, &mut r);
        assert_eq!(r, [0xe9, 0xe9]);
        for b in b"ok\n" {
            d.write(0, &[*b]);
        }
        d.write(0, &[b'x', 0x55, 0x66, 0x77]);
        d.write(0, &[]);
        assert_eq!(&buf.lock().unwrap()[..], b"ok\nx");
        assert_eq!(d.bytes, 4);
    }

    #[test]
    fn a_failing_sink_is_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut d = DebugConsole::new(Some(Box::new(Broken)));
        d.write(0, b"a");
        d.write(0, b"b");
        assert!(d.sink.is_none());
        assert_eq!(d.bytes, 2);
    }
}
