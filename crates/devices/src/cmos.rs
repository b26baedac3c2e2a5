//! The MC146818 CMOS RTC and its 128 bytes of CMOS memory at ports 0x70 (index, bit 7
//! masks NMI) and 0x71 (data). The clock registers read the host's current UTC time in BCD,
//! 24-hour mode; the rest is plain memory that firmware and the VMM may fill (SeaBIOS reads
//! memory sizes from it). Guest writes to the clock registers are kept as an offset from
//! the host clock, so a guest that sets the time sees it move on from there.

use crate::bus::{BusDevice, DeviceAction};
use std::time::{SystemTime, UNIX_EPOCH};

/// The index port (the data port follows it).
pub const CMOS_PORT: u64 = 0x70;
/// Ports decoded.
pub const CMOS_PORTS: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0A;
const STATUS_B: u8 = 0x0B;
const STATUS_C: u8 = 0x0C;
const STATUS_D: u8 = 0x0D;
const CENTURY: u8 = 0x32;

/// The RTC and CMOS memory.
#[derive(Debug, Clone)]
pub struct Cmos {
    /// Selected register.
    pub index: u8,
    /// CMOS memory (clock registers are computed on read).
    pub ram: [u8; 128],
    /// Seconds added to the host clock (from guest writes of the time).
    pub offset_secs: i64,
}

impl Default for Cmos {
    fn default() -> Self {
        let mut ram = [0u8; 128];
        ram[STATUS_A as usize] = 0x26; // 32.768 kHz divider, 1024 Hz rate, UIP clear
        ram[STATUS_B as usize] = 0x02; // 24-hour mode, BCD, no interrupts
        ram[STATUS_D as usize] = 0x80; // RAM and time valid
        Cmos {
            index: 0,
            ram,
            offset_secs: 0,
        }
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    (v >> 4) as u32 * 10 + (v & 0xf) as u32
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian): (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + (month <= 2) as i64;
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A boot device class as the BIOS boot flags in CMOS (0x3d, 0x38) encode it; SeaBIOS
/// orders its boot menu by them when QEMU's `-boot` is given without a `bootorder` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BootDevice {
    /// The first floppy drive (`a`).
    Floppy = 1,
    /// The first hard disk (`c`).
    Disk = 2,
    /// The first CD-ROM drive (`d`).
    Cdrom = 3,
    /// Network boot (`n`).
    Network = 4,
}

/// CMOS memory the BIOS reads its configuration from (the layout QEMU's PC machines use).
mod layout {
    /// Base memory in KiB (u16 LE).
    pub const BASE_MEMORY: usize = 0x15;
    /// Extended memory above 1 MiB in KiB, capped at 65535 (u16 LE; also at 0x30).
    pub const EXT_MEMORY: usize = 0x17;
    /// The same, where newer BIOSes look.
    pub const EXT_MEMORY2: usize = 0x30;
    /// Memory between 16 MiB and 4 GiB in 64 KiB units, capped at 65535 (u16 LE).
    pub const MEM_ABOVE_16M: usize = 0x34;
    /// Memory above 4 GiB in 64 KiB units (24 bits LE).
    pub const MEM_ABOVE_4G: usize = 0x5b;
    /// vCPUs less one.
    pub const CPU_COUNT: usize = 0x5f;
    /// Boot devices 1 (low nibble) and 2 (high nibble).
    pub const BOOT_FLAGS2: usize = 0x3d;
    /// Boot device 3 (high nibble); bit 0 set skips the floppy boot-signature check.
    pub const BOOT_FLAGS1: usize = 0x38;
}

impl Cmos {
    /// Record the guest's RAM for the BIOS: `below_4g` bytes from address 0 and
    /// `above_4g` bytes from 4 GiB.
    pub fn set_memory(&mut self, below_4g: u64, above_4g: u64) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let mut put16 = |at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            self.ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(layout::BASE_MEMORY, 640);
        let ext_kib = (below_4g + above_4g).saturating_sub(MIB) / KIB;
        put16(layout::EXT_MEMORY, ext_kib);
        put16(layout::EXT_MEMORY2, ext_kib);
        put16(
            layout::MEM_ABOVE_16M,
            below_4g.saturating_sub(16 * MIB) / (64 * KIB),
        );
        let high = (above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        self.ram[layout::MEM_ABOVE_4G..layout::MEM_ABOVE_4G + 3]
            .copy_from_slice(&high.to_le_bytes()[..3]);
    }

    /// Record the number of vCPUs (1 to 256) for the BIOS.
    pub fn set_cpus(&mut self, cpus: u16) {
        self.ram[layout::CPU_COUNT] = cpus.clamp(1, 256).wrapping_sub(1) as u8;
    }

    /// Record the boot order (up to three devices; more are ignored) for the BIOS, with
    /// the floppy signature check off, as QEMU does.
    pub fn set_boot_order(&mut self, order: &[BootDevice]) {
        let nibble = |i: usize| order.get(i).map_or(0, |d| *d as u8);
        self.ram[layout::BOOT_FLAGS2] = nibble(1) << 4 | nibble(0);
        self.ram[layout::BOOT_FLAGS1] = nibble(2) << 4 | 1;
    }

    fn now(&self) -> i64 {
        let host = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        host + self.offset_secs
    }

    fn clock_register(&self, reg: u8) -> Option<u8> {
        let t = self.now();
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400) as u32);
        let (year, month, day) = civil_from_days(days);
        Some(match reg {
            SECONDS => bcd(secs % 60),
            MINUTES => bcd(secs / 60 % 60),
            HOURS => bcd(secs / 3600),
            WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u32), // 1 = Sunday
            DAY => bcd(day),
            MONTH => bcd(month),
            YEAR => bcd(year.rem_euclid(100) as u32),
            CENTURY => bcd(year.div_euclid(100) as u32),
            _ => return None,
        })
    }

    fn set_clock_register(&mut self, reg: u8, value: u8) {
        let t = self.now();
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (mut year, mut month, mut day) = civil_from_days(days);
        let (mut h, mut m, mut s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let v = from_bcd(value) as i64;
        match reg {
            SECONDS => s = v,
            MINUTES => m = v,
            HOURS => h = v,
            DAY => day = v as u32,
            MONTH => month = v as u32,
            YEAR => year = year - year.rem_euclid(100) + v,
            CENTURY => year = v * 100 + year.rem_euclid(100),
            _ => return,
        }
        let wanted = days_from_civil(year, month.clamp(1, 12), day.clamp(1, 31)) * 86_400
            + h * 3600
            + m * 60
            + s;
        self.offset_secs += wanted - t;
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            0 => self.index,
            _ => {
                let reg = self.index & 0x7f;
                match reg {
                    STATUS_C => 0,
                    _ => self.clock_register(reg).unwrap_or(self.ram[reg as usize]),
                }
            }
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let v = *data.first()?;
        match offset {
            0 => self.index = v,
            _ => {
                let reg = self.index & 0x7f;
                match reg {
                    SECONDS | MINUTES | HOURS | DAY | MONTH | YEAR | CENTURY => {
                        self.set_clock_register(reg, v)
                    }
                    STATUS_A => self.ram[reg as usize] = v & 0x7f, // UIP is read-only
                    STATUS_C | STATUS_D | WEEKDAY => {}
                    _ => self.ram[reg as usize] = v,
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut d = [0u8];
        c.read(1, &mut d);
        d[0]
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(
            civil_from_days(days_from_civil(2026, 11, 25)),
            (2026, 11, 25)
        );
        assert_eq!(
            days_from_civil(2000, 2, 29) + 1,
            days_from_civil(2000, 3, 1)
        );
    }

    #[test]
    fn clock_reads_host_time_in_bcd() {
        let mut c = Cmos::default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (y, mo, d) = civil_from_days(now / 86_400);
        assert_eq!(read(&mut c, YEAR), bcd((y % 100) as u32));
        assert_eq!(read(&mut c, CENTURY), bcd((y / 100) as u32));
        assert_eq!(read(&mut c, MONTH), bcd(mo));
        assert_eq!(read(&mut c, DAY), bcd(d));
        assert_eq!(read(&mut c, STATUS_B), 0x02);
        assert_eq!(read(&mut c, STATUS_D), 0x80);
        assert_eq!(read(&mut c, STATUS_A) & 0x80, 0, "never mid-update");
    }

    #[test]
    fn memory_cpus_and_boot_order_as_the_bios_reads_them() {
        let mut c = Cmos::default();
        c.set_memory(32 << 20, 0);
        let word = |c: &mut Cmos, at: u8| u16::from(read(c, at)) | u16::from(read(c, at + 1)) << 8;
        assert_eq!(word(&mut c, 0x15), 640);
        assert_eq!(word(&mut c, 0x17), 31 * 1024);
        assert_eq!(word(&mut c, 0x30), 31 * 1024);
        assert_eq!(word(&mut c, 0x34), (32 - 16) * 16);
        assert_eq!(
            [read(&mut c, 0x5b), read(&mut c, 0x5c), read(&mut c, 0x5d)],
            [0; 3]
        );
        // 3 GiB below 4 GiB and 5 GiB above: the KiB counts cap, the high count does not.
        c.set_memory(3 << 30, 5 << 30);
        assert_eq!(word(&mut c, 0x17), 0xffff);
        assert_eq!(word(&mut c, 0x34), ((3u64 << 30) / 65536 - 256) as u16);
        let high = u32::from(read(&mut c, 0x5b))
            | u32::from(read(&mut c, 0x5c)) << 8
            | u32::from(read(&mut c, 0x5d)) << 16;
        assert_eq!(u64::from(high), (5u64 << 30) / 65536);
        c.set_cpus(4);
        assert_eq!(read(&mut c, 0x5f), 3);
        // -boot d: CD first, then the disk.
        c.set_boot_order(&[BootDevice::Cdrom, BootDevice::Disk]);
        assert_eq!(read(&mut c, 0x3d), 0x23);
        assert_eq!(read(&mut c, 0x38), 0x01);
        c.set_boot_order(&[BootDevice::Disk, BootDevice::Cdrom, BootDevice::Network]);
        assert_eq!((read(&mut c, 0x3d), read(&mut c, 0x38)), (0x32, 0x41));
    }

    #[test]
    fn guest_can_set_the_year_and_ram_is_kept() {
        let mut c = Cmos::default();
        c.write(0, &[YEAR]);
        c.write(1, &[0x99]);
        assert_eq!(read(&mut c, YEAR), 0x99);
        c.write(0, &[0x34 | 0x80]); // NMI-mask bit set on the index
        c.write(1, &[0xAB]);
        assert_eq!(read(&mut c, 0x34), 0xAB);
    }
}
