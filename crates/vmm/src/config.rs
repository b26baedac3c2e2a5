//! `VmConfig`: everything the builder needs to make a VM, in plain data. The CLI fills
//! it; library users can build one directly.

use kiln_arch::CpuMode;
pub use kiln_devices::cmos::BootDevice;
use std::path::PathBuf;

/// A file to copy into guest memory before the guest starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSpec {
    /// Where the bytes come from.
    pub source: LoadSource,
    /// Guest-physical address of the first byte.
    pub addr: u64,
}

/// The bytes of a load: a file, or bytes already in memory (built-in guests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadSource {
    /// A file on the host.
    File(PathBuf),
    /// Bytes with a name for messages.
    Bytes {
        /// Shown in messages.
        name: String,
        /// The contents.
        data: Vec<u8>,
    },
}

impl LoadSource {
    /// A name for messages.
    pub fn name(&self) -> String {
        match self {
            LoadSource::File(p) => p.display().to_string(),
            LoadSource::Bytes { name, .. } => name.clone(),
        }
    }
}

/// A multiboot module: a file and its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The module's file.
    pub path: PathBuf,
    /// The module's string; the file name when `None`.
    pub args: Option<String>,
}

/// What the guest is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestConfig {
    /// Raw binaries entered directly in a chosen CPU mode.
    Raw {
        /// Files and where they go.
        loads: Vec<LoadSpec>,
        /// Entry point; the first load's address when `None`.
        entry: Option<u64>,
        /// Entry mode.
        mode: CpuMode,
    },
    /// A kernel: a Linux bzImage, an ELF vmlinux with a PVH note, or a multiboot kernel
    /// (recognised from its contents).
    Kernel {
        /// The kernel file.
        kernel: PathBuf,
        /// The command line handed to the kernel.
        cmdline: String,
        /// An initial ramdisk (for multiboot kernels: the first module).
        initrd: Option<PathBuf>,
        /// Multiboot modules, in order (after the initrd).
        modules: Vec<ModuleSpec>,
    },
    /// A PC BIOS image entered at the reset vector (SeaBIOS: it boots from the disks and
    /// CD-ROM like a PC).
    Firmware(FirmwareConfig),
}

/// A BIOS boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareConfig {
    /// The BIOS image ([`crate::firmware::DEFAULT_BIOS`] is Debian's SeaBIOS).
    pub bios: PathBuf,
    /// Boot devices in the order the BIOS tries them (up to three).
    pub boot_order: Vec<BootDevice>,
    /// Where the BIOS's debug log (port 0x402) goes; dropped when `None`.
    pub log: Option<PathBuf>,
}

impl FirmwareConfig {
    /// Boot `bios` from the first hard disk.
    pub fn new(bios: impl Into<PathBuf>) -> Self {
        FirmwareConfig {
            bios: bios.into(),
            boot_order: vec![BootDevice::Disk],
            log: None,
        }
    }
}

/// Where a disk is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// A virtio-blk device (`/dev/vda`, `/dev/vdb`, ... in order).
    #[default]
    Virtio,
    /// A disk on the PIIX IDE controller at position `index` (0 primary master, 1 primary
    /// slave, 2 secondary master, 3 secondary slave), or the first free one. What a BIOS
    /// and every installer kernel can use.
    Ide {
        /// The position, as QEMU's `-drive index=`.
        index: Option<u8>,
    },
}

/// A disk: an image file on virtio-blk or IDE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// The image format; probed from the contents when `None` (a raw image whose first
    /// bytes look like a qcow2 header is then refused rather than guessed).
    pub format: Option<kiln_block::Format>,
    /// Refuse guest writes (the device offers VIRTIO_BLK_F_RO; the file opens read-only).
    pub read_only: bool,
    /// The serial number the guest reads (`/sys/block/vda/serial`), up to 20 bytes.
    pub serial: Option<String>,
    /// The bus the disk hangs on.
    pub bus: DiskBus,
    /// The qcow2 L2 table cache in bytes (QEMU's `l2-cache-size`); None: QEMU's default
    /// (enough for the whole disk, at most 32 MiB).
    pub l2_cache_size: Option<u64>,
}

/// A network interface the guest sees as a virtio-net device, backed by a host TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP device's name; Kiln creates it when it does not exist (CAP_NET_ADMIN).
    pub tap: String,
    /// The guest's MAC address; derived from the TAP name when `None`.
    pub mac: Option<[u8; 6]>,
}

/// A virtio-vsock device whose host side is a Unix socket (Firecracker's scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The Unix socket Kiln listens on for host-initiated connections (`CONNECT <port>`);
    /// guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A whole VM's configuration.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The guest.
    pub guest: GuestConfig,
    /// The KVM device to use; `None` for `$KILN_KVM_DEVICE` or `/dev/kvm`.
    pub kvm_path: Option<PathBuf>,
    /// Print a register dump when the VM stops.
    pub dump_regs: bool,
    /// Print exit counts and unknown accesses when the VM stops.
    pub trace_exits: bool,
    /// Forward standard input to the serial port.
    pub forward_stdin: bool,
    /// Give Linux guests ACPI tables.
    pub acpi: bool,
    /// Log when the guest writes to the boot-timer port, counting from this instant (the
    /// process start); `None` leaves the port unclaimed.
    pub boot_timer: Option<std::time::Instant>,
    /// Disks, virtio-blk or IDE.
    pub disks: Vec<DiskConfig>,
    /// An ISO 9660 image in an IDE (ATAPI) CD-ROM drive, read-only; at IDE position 2
    /// (secondary master) as in QEMU.
    pub cdrom: Option<PathBuf>,
    /// virtio-net interfaces on TAP devices (kernel guests only).
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device fed from the host's /dev/urandom (kernel guests only).
    pub rng: bool,
    /// A virtio console (the guest's hvc0; kernel guests only). Its output goes where the
    /// serial port's does, and standard input goes to it instead of to the serial port.
    pub virtio_console: bool,
    /// A virtio-vsock device (kernel guests only).
    pub vsock: Option<VsockConfig>,
}

impl VmConfig {
    /// Whether the VM gets any virtio device (they need PCI, so a kernel guest).
    pub fn wants_virtio(&self) -> bool {
        self.disks.iter().any(|d| d.bus == DiskBus::Virtio)
            || !self.nets.is_empty()
            || self.rng
            || self.virtio_console
            || self.vsock.is_some()
    }

    /// A configuration with defaults (128 MiB, one vCPU, stdin forwarded).
    pub fn new(guest: GuestConfig) -> Self {
        VmConfig {
            memory: 128 << 20,
            vcpus: 1,
            guest,
            kvm_path: None,
            dump_regs: false,
            trace_exits: false,
            forward_stdin: true,
            acpi: true,
            boot_timer: None,
            disks: Vec::new(),
            cdrom: None,
            nets: Vec::new(),
            rng: false,
            virtio_console: false,
            vsock: None,
        }
    }
}
