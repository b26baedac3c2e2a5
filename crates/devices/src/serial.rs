//! The 16550A UART at COM1 (0x3f8), built on `vm-superio`'s register model.
//!
//! Kiln adds what `vm-superio` leaves to its user: input bytes that arrive while the
//! 64-byte receive FIFO is full wait in an unbounded queue and move into the FIFO as the
//! guest reads, so no byte typed or piped into Kiln is ever dropped. Output goes to any
//! writer (Kiln's stdout). The interrupt line is optional: raw guests have no irqchip.

use crate::bus::{BusDevice, DeviceAction};
use std::collections::VecDeque;
use std::io::Write;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3f8;
/// Registers per UART.
pub const UART_PORTS: u64 = 8;

/// The UART's interrupt: an eventfd registered as an irqfd, or nothing.
#[derive(Debug)]
pub struct SerialIrq(pub Option<EventFd>);

impl Trigger for SerialIrq {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// A UART with an input queue in front of its FIFO.
pub struct SerialPort {
    uart: Serial<SerialIrq, NoEvents, Box<dyn Write + Send>>,
    pending: VecDeque<u8>,
    /// Bytes the guest wrote that the output writer refused.
    pub lost_output: u64,
}

impl SerialPort {
    /// A UART writing to `out`, raising `irq` when it has something to say.
    pub fn new(irq: SerialIrq, out: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Serial::new(irq, out),
            pending: VecDeque::new(),
            lost_output: 0,
        }
    }

    /// Queue input for the guest; as much as fits goes into the FIFO now.
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.fill_fifo();
    }

    /// Bytes waiting for room in the FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn fill_fifo(&mut self) {
        while !self.pending.is_empty() && self.uart.fifo_capacity() > 0 {
            let (front, _) = self.pending.as_slices();
            let n = front.len().min(self.uart.fifo_capacity());
            // An interrupt that cannot be delivered must not lose the bytes: they are
            // in the FIFO already and the guest will find them when it polls.
            let took = self.uart.enqueue_raw_bytes(&front[..n]).unwrap_or(n);
            if took == 0 {
                break;
            }
            self.pending.drain(..took);
        }
    }

    /// The register state (for snapshots and tests).
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Flush the output writer.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
        self.fill_fifo();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        if let Some(&b) = data.first() {
            if self.uart.write(offset as u8, b).is_err() {
                self.lost_output += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer() {
        let sink = Sink::default();
        let mut s = SerialPort::new(SerialIrq(None), Box::new(sink.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn no_input_byte_is_dropped_past_the_fifo() {
        let mut s = SerialPort::new(SerialIrq(None), Box::new(std::io::sink()));
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        s.enqueue_input(&input);
        assert!(s.pending_input() > 0, "more than a FIFO's worth is queued");
        let mut got = Vec::new();
        let mut d = [0u8];
        for _ in 0..5000 {
            s.read(5, &mut d); // LSR
            if d[0] & 1 == 0 {
                break;
            }
            s.read(0, &mut d);
            got.push(d[0]);
        }
        assert_eq!(got, input);
    }
}
