//! The PIIX3 IDE PCI function's configuration space.

use crate::ide::PiixIde;
use crate::pci::PciDevice;

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
