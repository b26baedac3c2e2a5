//! Read-ahead for IDE images. PIO moves one DRQ block (one 512-byte sector for READ
//! SECTORS, 2 KiB for an ATAPI block) per guest round trip, and firmware (SeaBIOS loading
//! a kernel for a boot loader) reads that way; without read-ahead every block is its own
//! image read (a system call, a qcow2 lookup). Reads of up to [`WINDOW`] are served from,
//! or filled into, one window of the image; every change to the image drops the window.

use kiln_block::{BlockDevice, Extent, Format, Result};

/// Bytes read at once when a read misses the window.
pub const WINDOW: usize = 64 << 10;

/// An image with a read-ahead window.
#[derive(Debug)]
pub struct ReadAhead {
    inner: Box<dyn BlockDevice>,
    window: Vec<u8>,
    start: u64,
}

impl ReadAhead {
    /// Wrap `inner`.
    pub fn new(inner: Box<dyn BlockDevice>) -> Self {
        ReadAhead {
            inner,
            window: Vec::new(),
            start: 0,
        }
    }

    fn drop_window(&mut self) {
        self.window.clear();
    }
}

impl BlockDevice for ReadAhead {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn format(&self) -> Format {
        self.inner.format()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.len() > WINDOW {
            return self.inner.read_at(buf, offset);
        }
        let end = offset.checked_add(buf.len() as u64);
        let window_end = self.start + self.window.len() as u64;
        let hit = offset >= self.start && end.is_some_and(|e| e <= window_end);
        if !hit {
            // Fill from `offset`, clipped to the image (a read past it fails below).
            let len = (self.inner.size().saturating_sub(offset)).min(WINDOW as u64) as usize;
            if len < buf.len() {
                self.drop_window();
                return self.inner.read_at(buf, offset);
            }
            self.window.resize(len, 0);
            if let Err(e) = self.inner.read_at(&mut self.window, offset) {
                self.drop_window();
                // The whole window failed; the request alone may not.
                return self.inner.read_at(buf, offset).map_err(|_| e);
            }
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        buf.copy_from_slice(&self.window[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.drop_window();
        self.inner.write_at(buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.drop_window();
        self.inner.discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.drop_window();
        self.inner.write_zeroes(offset, len)
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<(Extent, u64)> {
        self.inner.extent(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_block::OpenOptions;

    fn image(data: &[u8]) -> (tempfile::TempDir, Box<dyn BlockDevice>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        std::fs::write(&p, data).unwrap();
        let opts = OpenOptions {
            read_only: false,
            format: Some(Format::Raw),
            no_backing: false,
            share: kiln_block::Share::Readers,
        };
        let img = kiln_block::open(&p, &opts).unwrap();
        (dir, img)
    }

    #[test]
    fn reads_match_the_image_and_writes_are_seen() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_dir, img) = image(&data);
        let mut r = ReadAhead::new(img);
        let mut b = [0u8; 512];
        for lba in [0u64, 1, 2, 127, 128, 129, 300, 5, 584] {
            r.read_at(&mut b, lba * 512).unwrap();
            assert_eq!(&b[..], &data[lba as usize * 512..][..512], "sector {lba}");
        }
        r.write_at(&[0xee; 512], 2 * 512).unwrap();
        r.read_at(&mut b, 2 * 512).unwrap();
        assert_eq!(b, [0xee; 512], "a write drops the window");
        // The last partial window and a read past the end.
        let last = data.len() as u64 - 100;
        let mut tail = [0u8; 100];
        r.read_at(&mut tail, last).unwrap();
        assert_eq!(&tail[..], &data[last as usize..]);
        assert!(r.read_at(&mut b, data.len() as u64 - 10).is_err());
        assert!(r.read_at(&mut b, u64::MAX - 10).is_err());
        let mut big = vec![0u8; WINDOW + 512];
        r.read_at(&mut big, 512).unwrap();
        assert_eq!(
            &big[512..1024],
            &[0xee; 512],
            "sector 2, read past the window size"
        );
    }
}
