//! Image I/O errors: an in-memory image that fails on demand shows that every failure
//! ends the command it hit with the right error, and nothing else.

use super::*;
use kiln_block::{BlockDevice, Error, Result};

/// An in-memory image whose accesses touching bytes at or past `fail_from` fail, and
/// whose flush fails when `fail_flush` is set.
#[derive(Debug)]
pub(super) struct Flaky {
    data: Vec<u8>,
    fail_from: u64,
    fail_flush: bool,
}

impl Flaky {
    fn check(&self, offset: u64, len: usize) -> Result<()> {
        if offset + len as u64 > self.fail_from {
            return Err(Error::io("injected", std::io::Error::other("bad sector")));
        }
        Ok(())
    }
}

impl BlockDevice for Flaky {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn format(&self) -> kiln_block::Format {
        kiln_block::Format::Raw
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len())?;
        let o = offset as usize;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.fail_flush {
            return Err(Error::io("injected", std::io::Error::other("flush")));
        }
        Ok(())
    }
    fn discard(&mut self, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, _: u64, _: u64) -> Result<()> {
        Ok(())
    }
}

pub(super) fn flaky(len: usize, fail_from: u64, fail_flush: bool) -> Box<Flaky> {
    Box::new(Flaky {
        data: pattern(len),
        fail_from,
        fail_flush,
    })
}

pub(super) fn metric(r: &Rig, name: &str) -> u64 {
    let m = r.ch.lock().unwrap().metrics();
    m.iter().find(|(k, _)| *k == name).unwrap().1
}

#[test]
fn a_disk_read_error_fails_at_the_bad_block_with_unc() {
    // Sectors 0-9 are good, 10 on are bad.
    let disk = IdeMedia::Disk(flaky(64 * 512, 10 * 512, false));
    let mut r = Rig::new(Some(Spec::Media(disk)), None);
    r.irqs();
    r.lba28(0x20, 8, 4);
    // Sectors 8 and 9 arrive, then sector 10 fails.
    for lba in [8u32, 9] {
        assert_eq!(r.status() & (DRQ | ERR), DRQ, "sector {lba}");
        let d = r.read_data(512);
        assert!(d[..] == pattern(64 * 512)[lba as usize * 512..][..512]);
    }
    assert_eq!(r.irqs(), 3, "two blocks and the error");
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x40), "ERR, UNC");
    assert_eq!(
        [r.inb(3), r.inb(4), r.inb(5)],
        [10, 0, 0],
        "the failing sector"
    );
    assert_eq!(r.read_data(2), [0, 0]);
    assert_eq!(metric(&r, "io_errors"), 1);
    // LBA48 reports the failing sector in all six address bytes.
    r.lba48(0x24, 12, 1);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x40));
    assert_eq!([r.inb(3), r.inb(4), r.inb(5)], [12, 0, 0]);
    // The good part still reads.
    r.irqs();
    r.lba28(0x20, 0, 10);
    assert_eq!(r.pio_in(10 * 512, 512).len(), 5120);
}

#[test]
fn a_disk_write_or_flush_error_aborts() {
    let disk = IdeMedia::Disk(flaky(64 * 512, 10 * 512, true));
    let mut r = Rig::new(Some(Spec::Media(disk)), None);
    r.lba28(0x30, 9, 2);
    r.write_data(&[1; 512]);
    assert_eq!(
        r.status() & (DRQ | ERR),
        DRQ,
        "sector 9 written, 10 asked for"
    );
    r.write_data(&[2; 512]);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x04));
    assert_eq!(r.inb(3), 10);
    for cmd in [0xe7u8, 0xea] {
        r.outb(7, cmd);
        assert_eq!((r.status(), r.inb(1)), (0x41, 0x04), "flush {cmd:#x}");
    }
    // With the write cache off, a write that cannot be made durable fails too.
    r.outb(1, 0x82);
    r.outb(7, 0xef);
    assert_eq!(r.status(), 0x50);
    r.lba28(0x30, 0, 1);
    r.write_data(&[3; 512]);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x04));
    assert_eq!(metric(&r, "io_errors"), 4);
    assert_eq!(r.identify(0xec)[0], 0x0040, "still usable");
}

#[test]
fn a_cd_read_error_is_a_medium_error() {
    // Blocks 0-3 good, the rest bad.
    let cd = IdeMedia::Cdrom(flaky(16 * 2048, 4 * 2048, false));
    let mut r = Rig::new(Some(Spec::Media(cd)), None);
    r.srst();
    let p = r.packet(&[0x28, 0, 0, 0, 0, 2, 0, 0, 4], 2048);
    assert_eq!(p.blocks, [2048, 2048], "two good blocks, then the error");
    assert_eq!((p.status, p.error >> 4), (0x41, 0x03));
    let s = r.packet(&[0x03, 0, 0, 0, 18], 0xfffe);
    assert_eq!(
        (s.data[2], s.data[12]),
        (0x03, 0x11),
        "unrecovered read error"
    );
    let p = r.packet(&[0x28, 0, 0, 0, 0, 0, 0, 0, 4], 0xfffe);
    assert_eq!((p.status, p.error, p.data.len()), (0x50, 0, 4 * 2048));
}
