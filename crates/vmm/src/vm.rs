//! The VM: built from a [`VmConfig`], run until the guest or the user stops it.

use crate::config::DiskBus;
use crate::config::VmConfig;
use crate::console::{ConsoleInput, InputEvent, SharedOutput, StopSignals};
use crate::error::{kvm_err, os_err, Result, VmmError};
use crate::exits::ExitStats;
use crate::firmware::{self, BiosRom, LegacyWindow};
use crate::ide::IdeDevices;
use crate::kvm;
use crate::loader::{self, BootState, EntryKind};
use crate::memory::{create_guest_memory, GuestMem, MemorySlots, RamMappings};
use crate::platform::{self, Platform, PlatformSpec};
use crate::resources::Resources;
use crate::stop::{StopLatch, StopReason};
use crate::vcpu::{Vcpu, VcpuHandle, VcpuState, VmShared};
use crate::virtio::VirtioDevices;
use kiln_arch::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use kiln_arch::MemoryLayout;
use kiln_devices::bus::{lock, AccessCounts};
use kiln_devices::serial::SerialPort;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::io::Write;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// A built VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: Arc<VmFd>,
    memory: GuestMem,
    layout: MemoryLayout,
    slots: Arc<Mutex<MemorySlots>>,
    resources: Resources,
    shared: Arc<VmShared>,
    serial: Arc<Mutex<SerialPort>>,
    vcpus: Vec<Vcpu>,
    boot: BootState,
    forward_stdin: bool,
    virtio: VirtioDevices,
    ide: IdeDevices,
    // Last: dropped after the KVM VM, the vCPUs, the device threads and every use of
    // `memory`.
    _bios: Option<BiosRom>,
    _ram: RamMappings,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why the VM stopped.
    pub reason: StopReason,
    /// The vCPU that caused the stop, if one did.
    pub culprit: Option<usize>,
    /// The process exit status for `reason`.
    pub exit_status: u8,
    /// Exits of all vCPUs.
    pub stats: ExitStats,
    /// Register dumps, in vCPU order.
    pub dumps: Vec<String>,
    /// Port-I/O device access counts.
    pub device_counts: Vec<(&'static str, u64, AccessCounts)>,
    /// Each virtio device's name and counters (requests, bytes, errors).
    pub device_metrics: Vec<(String, Vec<(&'static str, u64)>)>,
    /// Guest RAM resident in host memory when the VM stopped, in bytes.
    pub guest_resident: u64,
}

/// The guest's physical address width, from KVM's CPUID leaf 0x8000_0008.
fn phys_bits(cpuid: &kvm_bindings::CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

impl Vm {
    /// Build a VM whose serial console writes to standard output.
    pub fn build(config: &VmConfig) -> Result<Vm> {
        Self::build_with_console(config, Box::new(std::io::stdout()))
    }

    /// Build a VM whose serial console (and virtio console, if any) writes to `out`.
    pub fn build_with_console(config: &VmConfig, out: Box<dyn Write + Send>) -> Result<Vm> {
        // COM1 and the virtio console share the output.
        let out = SharedOutput::new(out);
        let path = kvm::kvm_path(config.kvm_path.as_deref());
        let kvm = kvm::open(&path)?;
        let layout = MemoryLayout::new(config.memory);
        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let (memory, ram) = create_guest_memory(&layout, phys_bits(&supported))?;
        let boot = loader::load_guest(&memory, &layout, config)?;
        let linux = matches!(boot.kind, EntryKind::Linux64 | EntryKind::Pvh);
        let firmware = match &config.guest {
            crate::GuestConfig::Firmware(f) => Some(f),
            _ => None,
        };
        let bios = firmware.map(|f| BiosRom::load(&f.bios)).transpose()?;
        let irqchip = boot.kind != EntryKind::Raw;
        // The in-kernel LAPIC emulates the TSC-deadline timer, but KVM leaves its CPUID
        // bit for the VMM to set (as QEMU, Firecracker and Cloud Hypervisor do). Without
        // it Linux calibrates its LAPIC timer by counting PIT ticks, spinning until they
        // come: slower, and a boot that hangs if they do not.
        if irqchip && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            crate::vcpu::advertise_tsc_deadline(&mut supported);
        }
        if config.vcpus == 0 || (!linux && firmware.is_none() && config.vcpus != 1) {
            return Err(VmmError::Config(if config.vcpus == 0 {
                "a VM needs at least one vCPU".into()
            } else {
                "raw and multiboot guests run on exactly one vCPU".into()
            }));
        }

        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        // A BIOS ends at 4 GiB, over Kiln's usual place for KVM's pages: use QEMU's.
        let (tss, identity) = match firmware {
            Some(_) => (
                firmware::FIRMWARE_TSS_ADDR,
                firmware::FIRMWARE_IDENTITY_MAP_ADDR,
            ),
            None => (KVM_TSS_ADDR, KVM_IDENTITY_MAP_ADDR),
        };
        vm_fd
            .set_tss_address(tss as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            vm_fd
                .set_identity_map_address(identity)
                .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        if irqchip {
            vm_fd
                .create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
            if firmware.is_some() {
                kvm::pit_discard_lost_ticks(&vm_fd).map_err(os_err("KVM_REINJECT_CONTROL"))?;
            }
        }
        let mut slots = MemorySlots::new(vm_fd.clone(), kvm.get_nr_memslots());
        let readonly_mem = kvm.check_extension(Cap::ReadonlyMem);
        if let Some(rom) = &bios {
            slots.add_guest_ram_except(&memory, Some(firmware::LEGACY_WINDOW))?;
            rom.map_high(&mut slots, readonly_mem)?;
        } else {
            slots.add_guest_ram(&memory)?;
        }
        let slots = Arc::new(Mutex::new(slots));

        let mut resources = Resources::new(&layout)?;
        let spec = PlatformSpec {
            kernel_guest: irqchip,
            acpi: (linux || firmware.is_some()) && config.acpi,
            boot_timer: config.boot_timer,
            firmware: firmware
                .map(|f| firmware_devices(f, &layout, config, &memory))
                .transpose()?,
        };
        let Platform {
            pio,
            mmio,
            serial,
            pci,
        } = platform::build(spec, &vm_fd, &mut resources, Box::new(out.clone()))?;
        // Shared: the IDE controller's bus-master ports move when the guest moves BAR 4.
        let pio = Arc::new(pio);
        // IDE before virtio: the controller takes the first PCI slot, as on a PC.
        let ide = match &pci {
            Some(root) => IdeDevices::build(config, &vm_fd, &pio, &mut resources, root, &memory)?,
            None if config.cdrom.is_some()
                || config.disks.iter().any(|d| d.bus != DiskBus::Virtio) =>
            {
                return Err(VmmError::Config(
                    "IDE disks and CD-ROMs need a kernel or BIOS guest (--kernel, --bios)".into(),
                ))
            }
            None => IdeDevices::default(),
        };
        if let (Some(rom), Some(root)) = (&bios, &pci) {
            let window = Arc::new(Mutex::new(LegacyWindow::new(
                slots.clone(),
                memory.clone(),
                rom,
                readonly_mem,
            )?));
            let len = firmware::LEGACY_WINDOW.end - firmware::LEGACY_WINDOW.start;
            // Below RAM's end, outside the allocator's windows: nothing else can claim it.
            mmio.insert(
                "legacy-window",
                firmware::LEGACY_WINDOW.start,
                len,
                window.clone(),
            )
            .map_err(|e| VmmError::Config(e.to_string()))?;
            lock(&root.host_bridge).set_pam_hook(Box::new(move |pam| lock(&window).apply(pam)));
        }
        let console_out = config
            .virtio_console
            .then(|| Box::new(out.clone()) as Box<dyn Write + Send>);
        let virtio = match &pci {
            Some(root) => VirtioDevices::build(
                config,
                console_out,
                &memory,
                &vm_fd,
                &mmio,
                root,
                &mut resources,
            )?,
            None if config.wants_virtio() => return Err(VmmError::Config(
                "virtio devices need a kernel or BIOS guest (--kernel, --bios): they sit on PCI"
                    .into(),
            )),
            None => VirtioDevices::default(),
        };

        let shared = Arc::new(VmShared {
            pio,
            mmio,
            stop: StopLatch::new().map_err(os_err("eventfd"))?,
            hlt_stops: !irqchip,
            dump_regs: config.dump_regs,
            triple_fault_resets: linux || firmware.is_some(),
        });

        let mut vcpus = Vec::new();
        for id in 0..config.vcpus as usize {
            let fd = vm_fd
                .create_vcpu(id as u64)
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let vcpu = Vcpu::new(id, fd, &supported, config.vcpus as usize)?;
            // Firmware starts from the reset state KVM gives every vCPU, like hardware.
            if firmware.is_none() {
                if irqchip {
                    vcpu.setup_platform()?;
                }
                if id == 0 {
                    vcpu.set_boot_state(&boot)?;
                }
            }
            vcpus.push(vcpu);
        }

        Ok(Vm {
            _kvm: kvm,
            vm_fd,
            memory,
            layout,
            slots,
            resources,
            shared,
            serial,
            vcpus,
            boot,
            forward_stdin: config.forward_stdin,
            virtio,
            ide,
            _bios: bios,
            _ram: ram,
        })
    }

    /// The memory layout.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The memory-slot table (regions may be changed while the VM runs).
    pub fn slots(&self) -> Arc<Mutex<MemorySlots>> {
        self.slots.clone()
    }

    /// The resource allocators.
    pub fn resources(&mut self) -> &mut Resources {
        &mut self.resources
    }

    /// How the boot vCPU starts.
    pub fn boot_state(&self) -> &BootState {
        &self.boot
    }

    /// Run until the guest stops, a signal arrives or the user quits.
    pub fn run(self) -> Result<RunOutcome> {
        self.start()?.wait()
    }

    /// Start the vCPU threads and return at once. SIGINT and SIGTERM are blocked on the
    /// calling thread (and the vCPU threads) until [`RunningVm::wait`] returns, which must
    /// be called on the same thread.
    pub fn start(self) -> Result<RunningVm> {
        let signals = StopSignals::block()?;
        let epoll = Epoll::new().map_err(os_err("epoll_create"))?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.shared.stop.event().as_raw_fd(), TOKEN_STOP).map_err(os_err("epoll_ctl"))?;
        add(signals.raw_fd(), TOKEN_SIGNAL).map_err(os_err("epoll_ctl"))?;
        let mut input = if self.forward_stdin {
            ConsoleInput::open()
        } else {
            None
        };
        if let Some(mut console) = input.take() {
            if add(console.raw_fd(), TOKEN_INPUT).is_ok() {
                input = Some(console);
            } else {
                // A regular file or similar cannot be polled: it is all readable now.
                while let InputEvent::Bytes(b) = console.read() {
                    deliver_input(&self.virtio, &self.serial, &b);
                }
            }
        }

        let mut handles = Vec::new();
        for vcpu in self.vcpus {
            match vcpu.start(self.shared.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        h.stop();
                    }
                    return Err(e);
                }
            }
        }
        Ok(RunningVm {
            handles,
            shared: self.shared,
            serial: self.serial,
            memory: self.memory,
            epoll,
            signals,
            input,
            virtio: self.virtio,
            ide: self.ide,
            _kvm: self._kvm,
            _vm_fd: self.vm_fd,
            _slots: self.slots,
            _bios: self._bios,
            _ram: self._ram,
        })
    }
}

/// A firmware guest's fw_cfg, CMOS contents and debug console.
fn firmware_devices(
    f: &crate::config::FirmwareConfig,
    layout: &MemoryLayout,
    config: &VmConfig,
    memory: &GuestMem,
) -> Result<platform::FirmwareDevices> {
    let vcpus = config.vcpus;
    if f.boot_order.contains(&crate::config::BootDevice::Cdrom) && config.cdrom.is_none() {
        return Err(VmmError::Config(
            "--boot d: there is no CD-ROM to boot from (give one with --cdrom FILE)".into(),
        ));
    }
    let acpi = config.acpi.then(|| {
        kiln_arch::acpi_loader::loader_files(
            vcpus,
            kiln_arch::layout::IOAPIC_ADDR as u32,
            kiln_arch::layout::LAPIC_ADDR as u32,
            &firmware::pci_mem32_window(layout),
            &layout.mmio64(),
        )
    });
    let mut cmos = kiln_devices::cmos::Cmos::default();
    cmos.set_memory(layout.low_ram_size(), layout.high_ram_size());
    cmos.set_cpus(vcpus.into());
    cmos.set_boot_order(&f.boot_order);
    let log = match &f.log {
        Some(path) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                VmmError::Config(format!(
                    "cannot create the BIOS log {}: {}",
                    path.display(),
                    loader::io_reason(&e)
                ))
            })?,
        )) as Box<dyn Write + Send>),
        None => None,
    };
    Ok(platform::FirmwareDevices {
        cmos,
        fw_cfg: firmware::fw_cfg_items(layout, vcpus.into(), acpi).build(memory.clone()),
        acpi: config.acpi,
        debug_console: kiln_devices::debug_console::DebugConsole::new(log),
    })
}

/// Standard input goes to the virtio console when there is one, else to COM1.
fn deliver_input(virtio: &VirtioDevices, serial: &Arc<Mutex<SerialPort>>, bytes: &[u8]) {
    match &virtio.console_input {
        Some(console) => console.send(bytes),
        None => lock(serial).enqueue_input(bytes),
    }
}

const TOKEN_STOP: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_INPUT: u64 = 2;

/// A VM whose vCPU threads are running.
pub struct RunningVm {
    handles: Vec<VcpuHandle>,
    shared: Arc<VmShared>,
    serial: Arc<Mutex<SerialPort>>,
    memory: GuestMem,
    epoll: Epoll,
    signals: StopSignals,
    input: Option<ConsoleInput>,
    // Device threads stop before the VM and guest RAM go away.
    virtio: VirtioDevices,
    ide: IdeDevices,
    // Dropped last: the VM and its slots outlive the vCPU threads.
    _slots: Arc<Mutex<MemorySlots>>,
    _vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    // Last: the ROM and guest RAM outlive everything that can touch them.
    _bios: Option<BiosRom>,
    _ram: RamMappings,
}

impl RunningVm {
    /// Park every vCPU outside `KVM_RUN`; returns when all are parked (or stopped).
    pub fn pause(&self) {
        for h in &self.handles {
            h.pause();
        }
    }

    /// Let paused vCPUs run again.
    pub fn resume(&self) {
        for h in &self.handles {
            h.resume();
        }
    }

    /// Each vCPU's state, in vCPU order.
    pub fn vcpu_states(&self) -> Vec<VcpuState> {
        self.handles.iter().map(|h| h.control().state()).collect()
    }

    /// Ask the VM to stop, as if the guest had stopped it for `reason`.
    pub fn request_stop(&self, reason: StopReason) {
        self.shared.stop.request(reason, None);
    }

    /// Wait until the guest stops, a signal arrives or the user quits; stop every vCPU
    /// and report how the run ended.
    pub fn wait(mut self) -> Result<RunOutcome> {
        let mut events = vec![EpollEvent::default(); 4];
        'wait: while self.shared.stop.reason().is_none() {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.shared.stop.request(
                        StopReason::Internal(format!("epoll_wait failed: {e}")),
                        None,
                    );
                    break;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => break 'wait,
                    TOKEN_SIGNAL => {
                        if let Some(sig) = self.signals.take() {
                            self.shared.stop.request(StopReason::Signal(sig), None);
                        }
                    }
                    _ => self.console_input(),
                }
            }
        }

        for h in &self.handles {
            h.request_stop();
        }
        let reports: Vec<_> = self.handles.drain(..).map(|h| h.stop()).collect();
        let mut device_metrics = self.virtio.shutdown();
        device_metrics.extend(self.ide.metrics());
        self.input = None; // restores the terminal
        lock(&self.serial).flush();

        let (reason, culprit) = self.shared.stop.reason().unwrap_or((
            StopReason::Internal("stopped for no recorded reason".into()),
            None,
        ));
        let mut stats = ExitStats::default();
        let mut dumps = Vec::new();
        for r in reports {
            stats.merge(&r.stats);
            dumps.extend(r.dump);
        }
        Ok(RunOutcome {
            exit_status: reason.exit_status(),
            reason,
            culprit,
            stats,
            dumps,
            device_counts: self.shared.pio.counts(),
            device_metrics,
            guest_resident: crate::memory::guest_resident_bytes(&self.memory),
        })
    }

    fn console_input(&mut self) {
        let Some(console) = self.input.as_mut() else {
            return;
        };
        match console.read() {
            InputEvent::Bytes(b) => deliver_input(&self.virtio, &self.serial, &b),
            InputEvent::Quit => self.shared.stop.request(StopReason::UserQuit, None),
            InputEvent::Eof => {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    console.raw_fd(),
                    EpollEvent::default(),
                );
                self.input = None;
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        // Dropped without `wait` (e.g. a panic in the embedder): do not leave vCPU
        // threads running against a VM that is going away.
        for h in &self.handles {
            h.request_stop();
        }
        for h in self.handles.drain(..) {
            h.stop();
        }
    }
}

use std::os::fd::AsRawFd;
