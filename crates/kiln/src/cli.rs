//! Command-line definitions and their translation into a `VmConfig`.

use clap::{Parser, Subcommand, ValueEnum};
use kiln_arch::CpuMode;
use kiln_vmm::config::{BootDevice, DiskBus, DiskConfig, NetConfig, VsockConfig};
use kiln_vmm::{
    FirmwareConfig, GuestConfig, LoadSource, LoadSpec, ModuleSpec, StopReason, Vm, VmConfig,
};
use std::path::PathBuf;

/// The exit-status table, shared by the short and the long help.
macro_rules! exit_statuses {
    () => {
        "Exit status:
  0      guest halted (raw guests) or powered off; Ctrl-A x
  1      Kiln error: bad arguments, unreadable or invalid files, unusable /dev/kvm
  2      guest reset
  4      guest panic
  6      triple fault, KVM internal/emulation error, unexpected VM exit
  odd N  guest wrote V to the debug-exit port 0xf4: N = ((V << 1) | 1) & 0xff
  130    stopped by SIGINT; 143 stopped by SIGTERM"
    };
}

const EXIT_STATUSES: &str = exit_statuses!();

/// Kiln: a virtual machine monitor for Linux KVM.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest. With no guest arguments, runs the built-in demo guest.
    #[command(after_help = EXIT_STATUSES, after_long_help = RUN_LONG_HELP)]
    Run(Box<RunArgs>),
    /// Create, inspect, check and convert disk images (raw, qcow2).
    Img {
        /// What to do.
        #[command(subcommand)]
        command: Box<crate::img::ImgCommand>,
    },
    /// QEMU's classic command line (-m, -smp, -kernel, -append, -hda, -no-acpi, ...),
    /// translated into `kiln run`; `kiln kvm -help` lists what it takes.
    #[command(disable_help_flag = true)]
    Kvm {
        /// QEMU-style options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

const RUN_LONG_HELP: &str = concat!(
    "\
Guests:
  kiln run                                   the built-in demo guest
  kiln run --load code.bin@0xf0000 --load table.bin@0x100000 --mode real --dump-regs
  kiln run --kernel bzImage --initrd initrd.img --cmdline 'console=ttyS0' -m 512M --cpus 2
  kiln run --kernel mbkernel.elf --cmdline 'debug' --module initrd.img,'init args'

Raw guests start with CS:IP = (entry >> 4):(entry & 0xf) in real mode, or with Kiln's flat
GDT at 0x1000 (code 0x10 / 64-bit code 0x08, data 0x18) in protected and long mode; long
mode identity-maps RAM (at least 4 GiB) with 2 MiB pages in tables from 0x9000. RSP is
0x8000 and RBX points at Kiln's boot-info block at 0x1800. Loads may not overlap
0x1000-0x1fff, nor the page tables in long mode. The guest ends with HLT, a triple fault,
or a write to the debug-exit port 0xf4. The serial port is COM1 (0x3f8); stdin is
forwarded to it; Ctrl-A x quits when stdin is a terminal.

",
    exit_statuses!()
);

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// 16-bit real mode.
    Real,
    /// 32-bit protected mode, flat segments, no paging.
    Protected,
    /// 64-bit long mode, identity-mapped.
    Long,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnReboot {
    /// End Kiln with status 2.
    Exit,
    /// Boot the guest again in the same process.
    Restart,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Load FILE at guest-physical ADDR (repeatable), e.g. code.bin@0xf0000.
    #[arg(long, value_name = "FILE@ADDR", value_parser = parse_load)]
    load: Vec<(PathBuf, u64)>,

    /// Entry point of a raw guest [default: the first --load address].
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, requires = "load")]
    entry: Option<u64>,

    /// CPU mode a raw guest starts in.
    #[arg(long, value_enum, default_value_t = Mode::Real, requires = "load")]
    mode: Mode,

    /// A kernel to boot: Linux bzImage, ELF vmlinux with a PVH note, or multiboot v1.
    #[arg(long, value_name = "FILE", conflicts_with = "load")]
    kernel: Option<PathBuf>,

    /// The kernel command line.
    #[arg(long, value_name = "STRING", default_value = "", requires = "kernel")]
    cmdline: String,

    /// An initial ramdisk (for multiboot kernels, the first module).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,

    /// A multiboot module with an optional command line (repeatable).
    #[arg(long, value_name = "FILE[,ARGS]", requires = "kernel", value_parser = parse_module)]
    module: Vec<ModuleSpec>,

    /// Boot a PC BIOS from the reset vector [default FILE: Debian's SeaBIOS,
    /// /usr/share/seabios/bios-256k.bin]; it boots from the disks (see --boot). Implied
    /// by --boot.
    #[arg(long, value_name = "FILE", num_args = 0..=1,
          default_missing_value = kiln_vmm::firmware::DEFAULT_BIOS,
          conflicts_with_all = ["kernel", "load"])]
    bios: Option<PathBuf>,

    /// The BIOS boot order, QEMU's spelling: c (first hard disk), d (CD-ROM), n
    /// (network), a (floppy), e.g. "d", "dc" or "order=dc"; implies --bios.
    #[arg(long, value_name = "ORDER", value_parser = parse_boot_order,
          conflicts_with_all = ["kernel", "load"])]
    boot: Option<BootOrder>,

    /// Write the BIOS's debug log (SeaBIOS's port 0x402) to FILE.
    #[arg(long, value_name = "FILE")]
    bios_log: Option<PathBuf>,

    /// Guest RAM: 512M, 2G, or a plain number of MiB.
    #[arg(short = 'm', long, value_name = "SIZE", default_value = "128M", value_parser = parse_memory)]
    memory: u64,

    /// Number of vCPUs (Linux guests; raw and multiboot guests have one).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    cpus: u8,

    /// A disk (repeatable): path=FILE[,format=raw|qcow2][,readonly=on|off][,serial=ID]
    /// [,if=virtio|ide][,index=N]. virtio-blk by default (the guest sees /dev/vda,
    /// /dev/vdb, ... in order); if=ide puts it on the IDE controller (position index=0-3,
    /// else the first free one), where a BIOS and any installer kernel find it. The
    /// format is probed when not given; a comma in FILE is written ",,".
    /// l2-cache-size=SIZE sizes a qcow2 disk's L2 table cache as QEMU's option does
    /// (default: enough for the whole disk, at most 32 MiB).
    #[arg(long, value_name = "path=FILE,...", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,

    /// The first disk, format probed (short for --disk path=FILE, before any --disk).
    #[arg(long, value_name = "FILE")]
    hda: Option<PathBuf>,

    /// An ISO 9660 image in an IDE CD-ROM drive (read-only, secondary master, as in
    /// QEMU); boot from it with --boot d.
    #[arg(long, value_name = "FILE")]
    cdrom: Option<PathBuf>,

    /// A virtio-net interface on a host TAP device (repeatable): tap=NAME[,mac=52:54:..].
    /// Kiln creates the TAP when it does not exist (needs CAP_NET_ADMIN); configuring its
    /// host side (address, bridge) is up to you.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    net: Vec<NetConfig>,

    /// Give the guest a virtio-rng device fed from the host's /dev/urandom (/dev/hwrng).
    #[arg(long)]
    rng: bool,

    /// Give the guest a virtio console (hvc0; use console=hvc0): standard input goes to
    /// it instead of COM1; both write to standard output.
    #[arg(long)]
    virtio_console: bool,

    /// A virtio-vsock device: cid=N,uds=PATH (N >= 3). Host programs connect to the Unix
    /// socket PATH and write "CONNECT <port>\n" (answer: "OK <host port>\n"); guest
    /// connections to CID 2 port P go to the Unix socket PATH_P (Firecracker's scheme).
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,

    /// Boot Linux without ACPI tables (the classic -no-acpi); an MP table describes
    /// the CPUs and the IOAPIC instead.
    #[arg(long)]
    no_acpi: bool,

    /// What a guest reset does: end Kiln with status 2 (like QEMU's -no-reboot), or
    /// restart the VM in the same process.
    #[arg(long, value_enum, default_value_t = OnReboot::Exit, value_name = "ACTION")]
    on_reboot: OnReboot,

    /// Log the time from Kiln's start to each byte the guest writes to 0xfebff000 (MMIO).
    #[arg(long)]
    boot_timer: bool,

    /// Print the vCPU registers when the guest stops (always after a triple fault).
    #[arg(long)]
    dump_regs: bool,

    /// Print VM-exit counts and unknown port/MMIO accesses when the guest stops.
    #[arg(long)]
    trace_exits: bool,

    /// Print the VMM's peak RSS and the guest RAM resident at exit (benchmarks).
    #[arg(long, hide = true)]
    report_memory: bool,

    /// The KVM device (tests; default $KILN_KVM_DEVICE or /dev/kvm).
    #[arg(long, hide = true, value_name = "PATH")]
    kvm_device: Option<PathBuf>,
}

/// Parse a guest address: `0x` hex, or decimal.
fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.replace('_', "").parse(),
    };
    r.map_err(|_| format!("'{s}' is not an address (use 0x hex or decimal)"))
}

fn parse_load(s: &str) -> Result<(PathBuf, u64), String> {
    let (file, addr) = s
        .rsplit_once('@')
        .ok_or_else(|| format!("'{s}' is not FILE@ADDR"))?;
    if file.is_empty() {
        return Err(format!("'{s}' names no file"));
    }
    Ok((PathBuf::from(file), parse_addr(addr)?))
}

/// Split `key=value,key=value` where ",," stands for a comma inside a value.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().expect("one part").push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().expect("one part").push(c);
        }
    }
    parts
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        format: None,
        read_only: false,
        serial: None,
        bus: DiskBus::Virtio,
        l2_cache_size: None,
    };
    let mut index = None;
    for (i, part) in split_options(s).into_iter().enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => ("path".to_string(), part),
            None => return Err(format!("'{part}' in '{s}' is not key=value")),
        };
        match key.as_str() {
            "path" | "file" => disk.path = PathBuf::from(value),
            "format" => {
                disk.format =
                    Some(kiln_block::Format::from_name(&value).map_err(|e| e.to_string())?)
            }
            "readonly" => {
                disk.read_only = match value.as_str() {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(format!("readonly={value}: use on or off")),
                }
            }
            "serial" => {
                if value.len() > 20 {
                    return Err(format!("serial={value}: at most 20 bytes"));
                }
                disk.serial = Some(value);
            }
            "if" => {
                disk.bus = match value.as_str() {
                    "virtio" => DiskBus::Virtio,
                    "ide" => DiskBus::Ide { index: None },
                    _ => return Err(format!("if={value}: use virtio or ide")),
                }
            }
            "index" => {
                index = Some(
                    value
                        .parse::<u8>()
                        .ok()
                        .filter(|i| *i < 4)
                        .ok_or_else(|| format!("index={value}: an IDE position is 0 to 3"))?,
                )
            }
            "l2-cache-size" | "l2_cache_size" => {
                disk.l2_cache_size = Some(
                    crate::img::parse_size(&value).map_err(|e| format!("l2-cache-size: {e}"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown disk option '{key}' (path, format, readonly, serial, if, index, l2-cache-size)"
                ))
            }
        }
    }
    if let Some(i) = index {
        match disk.bus {
            DiskBus::Ide { .. } => disk.bus = DiskBus::Ide { index: Some(i) },
            DiskBus::Virtio => return Err(format!("'{s}': index= is for if=ide disks")),
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(format!("'{s}' names no file (path=FILE)"));
    }
    Ok(disk)
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("mac={s}: want six hex bytes like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac={s}: a multicast address cannot be an interface's"
        ));
    }
    Ok(mac)
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut net = NetConfig {
        tap: String::new(),
        mac: None,
    };
    for (i, part) in split_options(s).into_iter().enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => ("tap".to_string(), part),
            None => return Err(format!("'{part}' in '{s}' is not key=value")),
        };
        match key.as_str() {
            "tap" | "ifname" => net.tap = value,
            "mac" => net.mac = Some(parse_mac(&value)?),
            _ => return Err(format!("unknown network option '{key}' (tap, mac)")),
        }
    }
    if net.tap.is_empty() || net.tap.len() > 15 || net.tap.contains('/') {
        return Err(format!(
            "'{s}': tap=NAME needs an interface name of 1-15 characters, without '/'"
        ));
    }
    Ok(net)
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for part in split_options(s) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("'{part}' in '{s}' is not key=value"));
        };
        match key {
            "cid" | "guest_cid" => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| format!("cid={value}: not a number up to 4294967294"))?;
                if !(3..u32::MAX).contains(&n) {
                    return Err(format!(
                        "cid={value}: the guest's CID must be 3 to 4294967294 (0-2 are reserved)"
                    ));
                }
                cid = Some(n);
            }
            "uds" | "uds_path" | "path" if !value.is_empty() => uds = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown or empty vsock option '{key}' (cid, uds)")),
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds_path)) => Ok(VsockConfig { cid, uds_path }),
        _ => Err(format!("'{s}': --vsock needs cid=N,uds=PATH")),
    }
}

/// A BIOS boot order (a newtype: clap takes a bare `Vec` for a repeated option).
#[derive(Clone, Debug, PartialEq, Eq)]
struct BootOrder(Vec<BootDevice>);

/// Parse QEMU's `-boot` value: `d`, `dc`, `order=dc` (other keys are refused).
fn parse_boot_order(s: &str) -> Result<BootOrder, String> {
    let mut order = None;
    for (i, part) in s.split(',').enumerate() {
        let value = match part.split_once('=') {
            Some(("order", v)) => v,
            Some((key, _)) => {
                return Err(format!(
                    "boot option '{key}' is not supported (only order=)"
                ))
            }
            None if i == 0 => part,
            None => return Err(format!("'{part}' in '{s}' is not key=value")),
        };
        let mut devices = Vec::new();
        for c in value.chars() {
            let d = match c {
                'a' | 'b' => BootDevice::Floppy,
                'c' => BootDevice::Disk,
                'd' => BootDevice::Cdrom,
                'n' | 'o' | 'p' => BootDevice::Network,
                _ => {
                    return Err(format!(
                        "'{c}' in --boot {s} is not a boot device (a, c, d or n)"
                    ))
                }
            };
            if devices.contains(&d) {
                return Err(format!("--boot {s} names a device twice"));
            }
            devices.push(d);
        }
        if devices.is_empty() || devices.len() > 3 {
            return Err(format!("--boot {s}: give one to three devices, e.g. dc"));
        }
        order = Some(devices);
    }
    order
        .map(BootOrder)
        .ok_or_else(|| format!("--boot {s}: give one to three devices, e.g. dc"))
}

fn parse_module(s: &str) -> Result<ModuleSpec, String> {
    let (path, args) = match s.split_once(',') {
        Some((p, a)) => (p, Some(a.to_string())),
        None => (s, None),
    };
    if path.is_empty() {
        return Err(format!("'{s}' names no file"));
    }
    Ok(ModuleSpec {
        path: path.into(),
        args,
    })
}

/// Parse a memory size: a number with an optional K, M, G or T suffix (binary units,
/// optional trailing "B" or "iB"); a plain number means MiB, as in QEMU.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("'{s}' is not a memory size (examples: 512M, 2G, 1024)");
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        Some(c) if c.is_ascii_digit() => (body, 20),
        _ => return Err(bad()),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err("guest memory size must be greater than 0".into());
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Run the parsed command; returns the exit status, or a one-line error.
/// `start` is when the process started (for the boot timer).
pub fn execute(cli: Cli, start: std::time::Instant) -> Result<u8, String> {
    match cli.command {
        Command::Run(args) => run(*args, start),
        Command::Img { command } => crate::img::execute(*command),
        Command::Kvm { args } => classic(&args, start),
    }
}

/// `kiln kvm ARGS`: translate, then run exactly as `kiln run` would.
fn classic(args: &[String], start: std::time::Instant) -> Result<u8, String> {
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-h" | "-help" | "--help"))
    {
        print!("{}", crate::classic::HELP);
        return Ok(0);
    }
    let run_args = crate::classic::translate(args).map_err(|e| format!("kvm: {e}"))?;
    let argv = ["kiln".to_string(), "run".to_string()]
        .into_iter()
        .chain(run_args);
    let cli = Cli::try_parse_from(argv).map_err(|e| format!("kvm: {}", usage_line(&e)))?;
    execute(cli, start)
}

/// A clap usage error as one line, without clap's `error: ` prefix and its usage block.
pub fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or("invalid arguments");
    let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
    line.trim_start_matches("error: ").to_string()
}

fn run(args: RunArgs, start: std::time::Instant) -> Result<u8, String> {
    if args.bios_log.is_some() && args.bios.is_none() && args.boot.is_none() {
        return Err("--bios-log needs a BIOS guest (--bios or --boot)".into());
    }
    let guest = if let Some(kernel) = args.kernel {
        GuestConfig::Kernel {
            kernel,
            cmdline: args.cmdline,
            initrd: args.initrd,
            modules: args.module,
        }
    } else if args.bios.is_some() || args.boot.is_some() {
        let mut f = FirmwareConfig::new(
            args.bios
                .unwrap_or_else(|| kiln_vmm::firmware::DEFAULT_BIOS.into()),
        );
        if let Some(BootOrder(order)) = args.boot {
            f.boot_order = order;
        }
        f.log = args.bios_log;
        GuestConfig::Firmware(f)
    } else if !args.load.is_empty() {
        GuestConfig::Raw {
            loads: args
                .load
                .into_iter()
                .map(|(path, addr)| LoadSpec {
                    source: LoadSource::File(path),
                    addr,
                })
                .collect(),
            entry: args.entry,
            mode: match args.mode {
                Mode::Real => CpuMode::Real,
                Mode::Protected => CpuMode::Protected,
                Mode::Long => CpuMode::Long,
            },
        }
    } else {
        GuestConfig::Raw {
            loads: vec![LoadSpec {
                source: LoadSource::Bytes {
                    name: "the built-in demo guest".into(),
                    data: kiln_guests::DEMO.to_vec(),
                },
                addr: kiln_guests::DEMO_LOAD_ADDR,
            }],
            entry: None,
            mode: CpuMode::Real,
        }
    };
    let mut config = VmConfig::new(guest);
    config.memory = args.memory;
    config.vcpus = args.cpus;
    config.acpi = !args.no_acpi;
    config.boot_timer = args.boot_timer.then_some(start);
    config.kvm_path = args.kvm_device;
    config.dump_regs = args.dump_regs;
    config.trace_exits = args.trace_exits;
    if let Some(hda) = args.hda {
        config.disks.push(DiskConfig {
            path: hda,
            format: None,
            read_only: false,
            serial: None,
            bus: DiskBus::Virtio,
            l2_cache_size: None,
        });
    }
    config.disks.extend(args.disk);
    config.cdrom = args.cdrom;
    config.nets = args.net;
    config.rng = args.rng;
    config.virtio_console = args.virtio_console;
    config.vsock = args.vsock;

    let outcome = loop {
        let vm = Vm::build(&config).map_err(|e| e.to_string())?;
        let outcome = vm.run().map_err(|e| e.to_string())?;
        let reset = matches!(
            outcome.reason,
            StopReason::Reset | StopReason::TripleFaultReset
        );
        if reset && args.on_reboot == OnReboot::Restart {
            eprintln!("kiln: guest reset; restarting it (--on-reboot restart)");
            continue;
        }
        break outcome;
    };
    if let Some(msg) = outcome.reason.message() {
        match outcome.culprit {
            Some(id) => eprintln!("kiln: {msg} (vCPU {id})"),
            None => eprintln!("kiln: {msg}"),
        }
    }
    for dump in &outcome.dumps {
        eprint!("{dump}");
    }
    if config.trace_exits {
        eprint!("{}", outcome.stats.report());
        eprintln!("--- port devices ---");
        for (name, base, c) in &outcome.device_counts {
            eprintln!(
                "  {name:<12} {base:#06x} reads {} writes {}",
                c.reads, c.writes
            );
        }
        for (name, counters) in &outcome.device_metrics {
            let list: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("--- {name} ---\n  {}", list.join(" "));
        }
    }
    if args.report_memory {
        eprintln!(
            "kiln-memory: peak_rss_kib={} guest_resident_kib={}",
            peak_rss_kib(),
            outcome.guest_resident / 1024
        );
    }
    Ok(outcome.exit_status)
}

/// This process's peak resident set size in KiB (VmHWM in /proc/self/status).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("1024"), Ok(1 << 30));
        assert_eq!(parse_memory("64k"), Ok(64 << 10));
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("12Q").is_err());
        assert!(parse_memory("").is_err());
        assert!(parse_memory("99999999999T").is_err());
    }

    #[test]
    fn loads_and_addresses() {
        assert_eq!(
            parse_load("a@b.bin@0x1000"),
            Ok((PathBuf::from("a@b.bin"), 0x1000))
        );
        assert_eq!(parse_addr("1048576"), Ok(0x10_0000));
        assert!(parse_load("nofile").is_err());
        assert!(parse_load("@0x10").is_err());
        assert!(parse_addr("0xZZ").is_err());
    }

    #[test]
    fn vsock_options() {
        let v = parse_vsock("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds_path), (3, PathBuf::from("/tmp/v.sock")));
        assert_eq!(
            parse_vsock("uds=/a,,b,cid=4294967294").unwrap().uds_path,
            PathBuf::from("/a,b")
        );
        for bad in [
            "cid=2,uds=/x",
            "cid=4294967295,uds=/x",
            "cid=x,uds=/x",
            "cid=3",
            "uds=/x",
            "cid=3,uds=",
            "cid=3,uds=/x,port=1",
            "3",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_options() {
        let n = parse_net("tap=tap0,mac=52:54:00:ab:cd:ef").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
        assert_eq!(parse_net("kiln0").unwrap().tap, "kiln0");
        assert!(parse_net("tap=").is_err());
        assert!(parse_net("tap=a-very-long-name-0").is_err());
        assert!(
            parse_net("tap=t,mac=01:00:00:00:00:01").is_err(),
            "multicast"
        );
        assert!(parse_net("tap=t,mac=52:54:00").is_err());
        assert!(parse_net("tap=t,model=e1000").is_err());
    }

    #[test]
    fn disk_options() {
        let d = parse_disk("path=a,,b.qcow2,format=qcow2,readonly=on,serial=XY").unwrap();
        assert_eq!(d.l2_cache_size, None);
        let c = parse_disk("c.qcow2,l2-cache-size=4M").unwrap();
        assert_eq!(c.l2_cache_size, Some(4 << 20));
        assert!(parse_disk("c.qcow2,l2-cache-size=lots").is_err());
        assert_eq!(d.path, PathBuf::from("a,b.qcow2"));
        assert_eq!(d.format, Some(kiln_block::Format::Qcow2));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("XY"));
        assert_eq!(
            parse_disk("disk.img").unwrap().path,
            PathBuf::from("disk.img")
        );
        assert!(parse_disk("path=x,format=vmdk").is_err());
        assert!(parse_disk("path=x,readonly=maybe").is_err());
        assert!(parse_disk("path=x,serial=123456789012345678901").is_err());
        assert!(parse_disk("format=raw").is_err());
        assert!(parse_disk("path=x,colour=red").is_err());
    }
}
