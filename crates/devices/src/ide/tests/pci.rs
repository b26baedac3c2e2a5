//! The PIIX3 IDE PCI function's configuration space, with and without BAR 4.

use crate::ide::PiixIde;
use crate::pci::PciDevice;
use std::sync::{Arc, Mutex};

fn read32(d: &mut PiixIde, off: usize) -> u32 {
    let mut b = [0u8; 4];
    d.config_read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn reads_as_a_piix3_ide_in_compatibility_mode_without_bar4() {
    let mut d = PiixIde::new();
    assert_eq!(read32(&mut d, 0x00), 0x7010_8086);
    assert_eq!(read32(&mut d, 0x08) >> 8, 0x01_01_80);
    assert_eq!(read32(&mut d, 0x2c), 0x1100_1af4);
    for bar in 0..6 {
        let off = 0x10 + 4 * bar;
        d.config_write(off, &[0xff; 4]);
        assert_eq!(read32(&mut d, off), 0, "BAR {bar} is absent");
    }
    assert_eq!(read32(&mut d, 0x3c) >> 8 & 0xff, 0, "no interrupt pin");
    assert_eq!(read32(&mut d, 0x40), 0x8000_8000, "IDETIM: decode enabled");
    d.config_write(0x40, &[0x07, 0xa3, 0x01, 0x80]);
    assert_eq!(read32(&mut d, 0x40), 0x8001_a307);
    assert_eq!(d.idetim(0), 0xa307);
    assert_eq!(d.idetim(1), 0x8001);
    d.config_write(0x00, &[0; 4]);
    d.config_write(0x08, &[0; 4]);
    assert_eq!(read32(&mut d, 0x00), 0x7010_8086);
    assert_eq!(read32(&mut d, 0x08) >> 8, 0x01_01_80);
    d.config_write(0x04, &[0x05, 0]);
    assert_eq!(read32(&mut d, 0x04) & 0xffff, 0x0005);
}

fn write32(d: &mut PiixIde, off: usize, v: u32) {
    d.config_write(off, &v.to_le_bytes());
}

/// A bus-master function whose hook records its calls.
fn recorded() -> (PiixIde, Arc<Mutex<Vec<Option<u16>>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let d = PiixIde::with_bus_master(Box::new(move |at| c.lock().unwrap().push(at)));
    (d, calls)
}

fn take(calls: &Mutex<Vec<Option<u16>>>) -> Vec<Option<u16>> {
    std::mem::take(&mut *calls.lock().unwrap())
}

#[test]
fn bar4_sizes_places_and_reports_the_bus_master_ports() {
    let (mut d, calls) = recorded();
    assert_eq!(read32(&mut d, 0x08) >> 8, 0x01_01_80, "prog-if 80h");
    assert_eq!(read32(&mut d, 0x20), 0x0000_0001, "an I/O BAR at 0");
    // Linux sizes with decoding off: all-ones reads back the 16-port size.
    write32(&mut d, 0x20, 0xffff_ffff);
    assert_eq!(read32(&mut d, 0x20), 0xffff_fff1);
    write32(&mut d, 0x20, 0xc041);
    assert_eq!(
        read32(&mut d, 0x20),
        0xc041,
        "16-port aligned, I/O bit kept"
    );
    assert_eq!(take(&calls), [], "decoding is off");
    assert_eq!(d.bus_master_base(), None);
    // Enabling I/O decoding maps it; bus mastering and repeats change nothing.
    d.config_write(0x04, &[0x01]);
    assert_eq!(take(&calls), [Some(0xc040)]);
    assert_eq!(d.bus_master_base(), Some(0xc040));
    d.config_write(0x04, &[0x05, 0x00]);
    write32(&mut d, 0x20, 0xc040);
    assert_eq!(take(&calls), []);
    // Sizing with decoding on unmaps it until the BAR holds a port again.
    write32(&mut d, 0x20, 0xffff_ffff);
    assert_eq!(take(&calls), [None]);
    write32(&mut d, 0x20, 0xc040);
    assert_eq!(take(&calls), [Some(0xc040)]);
    // A move is away-then-there; 16-bit writes of the BAR work too.
    d.config_write(0x20, &[0x00, 0xd0]);
    assert_eq!(take(&calls), [None, Some(0xd000)]);
    d.config_write(0x21, &[0xe0]);
    assert_eq!(take(&calls), [None, Some(0xe000)]);
    // Disabling decoding, a zero BAR and a block past 64 KiB are unmapped.
    d.config_write(0x04, &[0x04]);
    assert_eq!(take(&calls), [None]);
    write32(&mut d, 0x20, 0);
    d.config_write(0x04, &[0x05]);
    assert_eq!(take(&calls), []);
    write32(&mut d, 0x20, 0xfff0);
    assert_eq!(take(&calls), [Some(0xfff0)]);
    write32(&mut d, 0x20, 0x1_0000);
    assert_eq!(take(&calls), [None]);
    assert_eq!(read32(&mut d, 0x20), 0x1_0001);
    // Wide and stray writes around it do not confuse the hook.
    d.config_write(0x1c, &[0xff; 8]);
    assert_eq!(take(&calls), []);
    d.config_write(0xfe, &[0xff; 8]);
    d.config_write(0x20, &[]);
    write32(&mut d, 0x20, 0x0170);
    assert_eq!(take(&calls), [Some(0x0170)]);
    for bar in [0, 1, 2, 3, 5] {
        let off = 0x10 + 4 * bar;
        write32(&mut d, off, 0xffff_ffff);
        assert_eq!(read32(&mut d, off), 0, "BAR {bar} is absent");
    }
}

#[test]
fn timing_registers_are_writable_without_effect() {
    let (mut with_bm, _calls) = recorded();
    for d in [&mut PiixIde::new(), &mut with_bm] {
        d.config_write(0x40, &[0x07, 0xa3, 0x01, 0x80]);
        d.config_write(0x44, &[0xff; 4]);
        d.config_write(0x48, &[0xff; 4]);
        assert_eq!(read32(d, 0x40), 0x8001_a307);
        assert_eq!(read32(d, 0x44), 0x0000_00ff, "SIDETIM");
        assert_eq!(read32(d, 0x48), 0xffff_00ff, "UDMACTL, UDMATIM");
        d.config_write(0x4a, &[0x12, 0x02]);
        assert_eq!(read32(d, 0x48) >> 16, 0x0212);
        assert_eq!(read32(d, 0x4c), 0);
    }
}

#[test]
fn the_pio_only_function_has_no_bus_master() {
    let mut d = PiixIde::new();
    d.config_write(0x04, &[0x05]);
    write32(&mut d, 0x20, 0xc040);
    assert_eq!(read32(&mut d, 0x20), 0);
    assert_eq!(d.bus_master_base(), None);
}
