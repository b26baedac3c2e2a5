//! `kiln kvm ARGS` (and the binary invoked as `kvm`): QEMU's classic single-dash command
//! line, translated into the `kiln run` arguments that build the same configuration, so a
//! pasted `kvm -m 384 -kernel bzImage -append ... -hda disk.img` works.
//!
//! Hand-written because clap cannot parse single-dash long options (`-append`, `-smp`);
//! the translation is a plain list of rules, one per QEMU option. QEMU also accepts each
//! option with two dashes, and so does this. Anything outside the common subset is one
//! clear error naming the option, never silently dropped.

/// The options `kiln kvm` understands, for its help and error messages.
pub const HELP: &str = "\
kiln kvm: QEMU's classic command line, translated into `kiln run`.

Usage: kiln kvm [OPTIONS]      (or the kiln binary invoked through a symlink named kvm)

  -m SIZE | -m size=SIZE     guest RAM (a plain number is MiB, as in QEMU)
  -smp N | -smp cpus=N,...   vCPUs
  -kernel FILE               a Linux bzImage/vmlinux or multiboot kernel
  -initrd FILE               its initial ramdisk
  -append STRING             its command line
  -hda/-hdb/-hdc/-hdd FILE   IDE disks at index 0-3 (with -kernel: virtio-blk disks
                             /dev/vda, /dev/vdb, ... in that order)
  -cdrom FILE                an ISO image in the IDE CD-ROM drive (index 2)
  -drive file=F[,format=raw|qcow2][,if=ide|virtio][,readonly=on][,index=N]
         [,media=disk|cdrom]
  -boot c|d|order=dc         BIOS boot order: c first hard disk, d CD-ROM
  -bios FILE                 the BIOS image (default: SeaBIOS from Debian's seabios)
  -no-acpi, -machine acpi=off    boot without ACPI
  -machine pc|q35|microvm    accepted; Kiln has one machine type
  -no-reboot                 a guest reset ends Kiln (status 2); without it the VM restarts
  -nographic, -display none, -serial stdio, -enable-kvm, -accel kvm, -cpu host
                             accepted: Kiln is always serial-only on stdio and on KVM

Without -kernel, a guest with disks, a CD-ROM, -boot or -bios boots through the BIOS,
as QEMU does. Any other option is refused by name.
";

/// Where a -drive or -hdX disk goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interface {
    Ide,
    Virtio,
}

/// Disks named by -hdX, -drive or -cdrom, in QEMU's index order.
#[derive(Default)]
struct Disks {
    /// (index, interface, --disk value); `None` for the CD-ROM's file.
    slots: Vec<(u32, Interface, String)>,
    cdrom: Option<String>,
}

impl Disks {
    fn taken(&self, index: u32) -> bool {
        self.slots.iter().any(|(j, _, _)| *j == index)
            || (self.cdrom.is_some() && index == CDROM_INDEX)
    }

    fn add(&mut self, index: Option<u32>, bus: Interface, value: String) -> Result<(), String> {
        let index = match index {
            Some(i) => i,
            None => (0..).find(|i| !self.taken(*i)).unwrap_or(0),
        };
        if self.taken(index) {
            return Err(format!("two disks at index {index}"));
        }
        self.slots.push((index, bus, value));
        Ok(())
    }

    fn add_cdrom(&mut self, file: String) -> Result<(), String> {
        if self.cdrom.is_some() {
            return Err("two CD-ROMs (Kiln has one drive)".into());
        }
        if self.taken(CDROM_INDEX) {
            return Err(format!("two disks at index {CDROM_INDEX} (the CD-ROM's)"));
        }
        if file.is_empty() {
            return Err("-cdrom needs a file name".into());
        }
        self.cdrom = Some(file);
        Ok(())
    }
}

/// `path=F` with QEMU's and Kiln's comma escape (`,,`) kept.
fn disk_value(file: &str) -> Result<String, String> {
    if file.is_empty() {
        return Err("a disk needs a file name".into());
    }
    Ok(format!("path={}", file.replace(',', ",,")))
}

/// Split a QEMU option value at single commas (`,,` is a literal comma) into
/// key=value pairs; a first item without `=` is returned as the key `""`.
fn props(value: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
                continue;
            }
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (String::new(), item),
        })
        .collect()
}

/// QEMU's index of the CD-ROM (secondary master).
const CDROM_INDEX: u32 = 2;

/// What a `-drive` option describes.
enum Drive {
    Disk(Option<u32>, Interface, String),
    Cdrom(String),
}

/// `-drive` to a disk (index, interface, `--disk` value) or a CD-ROM file.
fn drive(value: &str) -> Result<Drive, String> {
    let (mut file, mut extra, mut index) = (None, Vec::new(), None);
    let (mut bus, mut cdrom) = (Interface::Ide, false);
    for (k, v) in props(value) {
        match k.as_str() {
            "file" => file = Some(v),
            "format" => extra.push(format!("format={v}")),
            "if" if v == "ide" => bus = Interface::Ide,
            "if" if v == "virtio" => bus = Interface::Virtio,
            "media" if v == "disk" => {}
            "media" if v == "cdrom" => cdrom = true,
            "readonly" if v == "on" || v == "off" => extra.push(format!("readonly={v}")),
            "index" => {
                index = Some(
                    v.parse()
                        .map_err(|_| format!("-drive index={v}: not a number"))?,
                )
            }
            "cache" | "aio" | "discard" | "id" => {}
            _ if k.is_empty() => return Err(format!("-drive {value}: '{v}' is not key=value")),
            _ => return Err(format!("-drive {k}={v} is not supported")),
        }
    }
    let file = file.ok_or_else(|| format!("-drive {value}: no file="))?;
    if cdrom {
        if bus != Interface::Ide || index.is_some_and(|i| i != CDROM_INDEX) {
            return Err(format!(
                "-drive {value}: the CD-ROM drive is IDE index {CDROM_INDEX}"
            ));
        }
        return Ok(Drive::Cdrom(file));
    }
    let mut out = disk_value(&file)?;
    for e in extra {
        out.push(',');
        out.push_str(&e);
    }
    Ok(Drive::Disk(index, bus, out))
}

/// `-machine`/`-M`: a machine type and properties; only acpi=on|off matters.
fn machine(value: &str, args: &mut Vec<String>) -> Result<(), String> {
    for (k, v) in props(value) {
        match (k.as_str(), v.as_str()) {
            ("" | "type", "pc" | "q35" | "microvm" | "accel") | ("accel", "kvm") => {}
            ("", t) | ("type", t) if t.starts_with("pc-") => {}
            ("acpi", "off") => args.push("--no-acpi".into()),
            ("acpi", "on") => {}
            _ if k.is_empty() => return Err(format!("-machine {v}: unknown machine type")),
            _ => return Err(format!("-machine {k}={v} is not supported")),
        }
    }
    Ok(())
}

/// `-smp N` or `-smp cpus=N,...` to a vCPU count.
fn smp(value: &str) -> Result<String, String> {
    for (k, v) in props(value) {
        if k.is_empty() || k == "cpus" {
            return Ok(v);
        }
    }
    Err(format!("-smp {value}: no CPU count"))
}

/// The `kiln run` arguments (without `run`) for QEMU-style `args`, or one line saying
/// which option is wrong.
pub fn translate(args: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut disks = Disks::default();
    let mut reboot = "restart";
    let mut bios: Option<String> = None;
    let mut boot: Option<String> = None;
    let mut it = args.iter();
    while let Some(raw) = it.next() {
        let opt = raw
            .strip_prefix("--")
            .or_else(|| raw.strip_prefix('-'))
            .filter(|o| !o.is_empty())
            .ok_or_else(|| {
                format!("'{raw}' is not an option (a disk image is given with -hda FILE)")
            })?;
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("-{opt} needs {what}"))
        };
        match opt {
            "m" => {
                let v = value("a size")?;
                let v = v
                    .strip_prefix("size=")
                    .map_or(v.as_str(), |s| s)
                    .to_string();
                out.extend(["-m".into(), v]);
            }
            "smp" => out.extend(["--cpus".into(), smp(&value("a CPU count")?)?]),
            "kernel" => out.extend(["--kernel".into(), value("a file")?]),
            "initrd" => out.extend(["--initrd".into(), value("a file")?]),
            "append" => out.extend(["--cmdline".into(), value("a command line")?]),
            "hda" | "hdb" | "hdc" | "hdd" => {
                let index = u32::from(opt.as_bytes()[2] - b'a');
                disks.add(Some(index), Interface::Ide, disk_value(&value("a file")?)?)?;
            }
            "drive" => match drive(&value("file=...")?)? {
                Drive::Disk(index, bus, v) => disks.add(index, bus, v)?,
                Drive::Cdrom(file) => disks.add_cdrom(file)?,
            },
            "cdrom" => disks.add_cdrom(value("an ISO image")?)?,
            "boot" => boot = Some(value("a boot order")?),
            "bios" => bios = Some(value("a BIOS image")?),
            "no-acpi" => out.push("--no-acpi".into()),
            "machine" | "M" => machine(&value("a machine type")?, &mut out)?,
            "no-reboot" => reboot = "exit",
            "nographic" | "enable-kvm" => {}
            "display" => match value("a display")?.as_str() {
                "none" => {}
                d => {
                    return Err(format!(
                        "-display {d}: Kiln has no display (use -nographic)"
                    ))
                }
            },
            "serial" => match value("a device")?.as_str() {
                "stdio" | "mon:stdio" => {}
                s => return Err(format!("-serial {s}: Kiln's serial port is always stdio")),
            },
            "accel" => match value("an accelerator")?.as_str() {
                "kvm" => {}
                a => return Err(format!("-accel {a}: Kiln runs on KVM only")),
            },
            "cpu" => match value("a CPU model")?.as_str() {
                "host" | "max" => {}
                c => return Err(format!("-cpu {c}: Kiln gives the guest the host's CPU")),
            },
            "h" | "help" => return Err(HELP.trim_end().to_string()),
            _ => {
                return Err(format!(
                    "-{opt} is not a supported QEMU option (see 'kiln kvm -help')"
                ))
            }
        }
    }
    disks.slots.sort_by_key(|(i, _, _)| *i);
    let kernel = out.iter().any(|a| a == "--kernel");
    if kernel {
        if let Some(b) = bios
            .as_ref()
            .map(|_| "-bios")
            .or(boot.as_ref().map(|_| "-boot"))
        {
            return Err(format!(
                "{b} is for BIOS boot; -kernel boots the kernel directly"
            ));
        }
        // Direct kernel boot: Kiln's Linux machine has virtio-blk disks.
        for (_, _, d) in disks.slots {
            out.extend(["--disk".into(), d]);
        }
        if let Some(cd) = disks.cdrom {
            out.extend(["--cdrom".into(), cd]);
        }
    } else {
        let firmware =
            bios.is_some() || boot.is_some() || disks.cdrom.is_some() || !disks.slots.is_empty();
        if firmware {
            out.push("--bios".into());
            out.extend(bios);
        }
        for (index, bus, d) in disks.slots {
            let d = match bus {
                Interface::Ide => format!("{d},if=ide,index={index}"),
                Interface::Virtio => d,
            };
            out.extend(["--disk".into(), d]);
        }
        if let Some(cd) = disks.cdrom {
            out.extend(["--cdrom".into(), cd]);
        }
        if let Some(b) = boot {
            out.extend(["--boot".into(), b]);
        }
    }
    out.extend(["--on-reboot".into(), reboot.into()]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Result<Vec<String>, String> {
        translate(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ok(args: &[&str]) -> String {
        t(args).unwrap().join(" ")
    }

    #[test]
    fn the_classic_command_line() {
        assert_eq!(
            ok(&[
                "-m",
                "384",
                "-smp",
                "2",
                "-kernel",
                "bzImage",
                "-initrd",
                "initrd.img",
                "-append",
                "console=ttyS0 root=/dev/vda",
                "-hda",
                "vm-disk.img",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-enable-kvm",
                "-no-acpi"
            ]),
            "-m 384 --cpus 2 --kernel bzImage --initrd initrd.img --cmdline console=ttyS0 \
             root=/dev/vda --no-acpi --disk path=vm-disk.img --on-reboot exit"
        );
        assert_eq!(
            ok(&[]),
            "--on-reboot restart",
            "QEMU restarts a rebooting guest"
        );
        assert_eq!(
            ok(&[
                "--m",
                "size=1G",
                "-smp",
                "cpus=4,sockets=1",
                "-machine",
                "pc,acpi=off"
            ]),
            "-m 1G --cpus 4 --no-acpi --on-reboot restart"
        );
    }

    #[test]
    fn disks_in_index_order_with_drive_properties() {
        assert_eq!(
            ok(&[
                "-kernel",
                "k",
                "-hdb",
                "b,x.img",
                "-drive",
                "file=c.qcow2,format=qcow2,if=virtio,readonly=on,index=2",
                "-hda",
                "a.img",
                "-drive",
                "file=d.img,if=ide,cache=none"
            ]),
            "--kernel k --disk path=a.img --disk path=b,,x.img \
             --disk path=c.qcow2,format=qcow2,readonly=on --disk path=d.img --on-reboot restart"
        );
        assert_eq!(
            t(&["-kernel", "k", "-hda", "a", "-drive", "file=b,index=0"]).unwrap_err(),
            "two disks at index 0"
        );
    }

    #[test]
    fn bios_boot_of_the_classic_workflow() {
        assert_eq!(
            ok(&[
                "-m",
                "384",
                "-cdrom",
                "guestos.iso",
                "-hda",
                "vm-disk.img",
                "-boot",
                "d"
            ]),
            "-m 384 --bios --disk path=vm-disk.img,if=ide,index=0 --cdrom guestos.iso \
             --boot d --on-reboot restart"
        );
        assert_eq!(
            ok(&["-no-acpi", "-hda", "vm-disk.img", "-no-reboot"]),
            "--no-acpi --bios --disk path=vm-disk.img,if=ide,index=0 --on-reboot exit"
        );
        assert_eq!(
            ok(&[
                "-bios",
                "my.bin",
                "-drive",
                "file=d.iso,media=cdrom",
                "-drive",
                "file=v.qcow2,if=virtio,format=qcow2",
                "-drive",
                "file=b.img,index=1"
            ]),
            "--bios my.bin --disk path=v.qcow2,format=qcow2 --disk path=b.img,if=ide,index=1 \
             --cdrom d.iso --on-reboot restart"
        );
    }

    #[test]
    fn unsupported_options_are_named() {
        let e = |args: &[&str]| t(args).unwrap_err();
        assert!(e(&["-usb"]).starts_with("-usb is not a supported QEMU option"));
        assert!(e(&["-serial", "pty"]).starts_with("-serial pty:"));
        assert!(e(&["-machine", "virt"]).starts_with("-machine virt: unknown"));
        assert!(e(&["-drive", "file=x,media=cdrom,index=0"]).contains("IDE index 2"));
        assert_eq!(
            e(&["-cdrom", "a.iso", "-hdc", "c.img"]),
            "two disks at index 2"
        );
        assert!(e(&["-kernel", "k", "-boot", "d"]).starts_with("-boot is for BIOS boot"));
        assert!(e(&["-drive", "file=x,snapshot=on"]).contains("snapshot=on is not supported"));
        assert!(e(&["disk.img"]).starts_with("'disk.img' is not an option"));
        assert_eq!(e(&["-m"]), "-m needs a size");
        assert!(e(&["-help"]).starts_with("kiln kvm: QEMU's classic"));
    }
}
