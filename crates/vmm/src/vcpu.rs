//! vCPUs: each runs `KVM_RUN` on its own thread, driven by an explicit state machine
//! (`Created -> Running <-> Paused -> Stopped`), and turns every exit into a bus access
//! or a reason to stop.
//!
//! A vCPU blocked in `KVM_RUN` is kicked with a per-thread real-time signal whose handler
//! sets the thread's `kvm_run.immediate_exit`, so a kick that lands just before the vCPU
//! re-enters the kernel is not lost: `KVM_RUN` then returns at once with `EINTR`.

use crate::error::{kvm_err, Result};
use crate::exits::{Access, ExitStats};
use crate::loader::{BootState, EntryKind};
use crate::regs::format_dump;
use crate::stop::{StopLatch, StopReason};
use kiln_devices::{Bus, DeviceAction};
use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// The real-time signal (offset from SIGRTMIN) that kicks a vCPU out of `KVM_RUN`.
pub const KICK_SIGNAL_OFFSET: i32 = 0;

/// Where a vCPU is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Configured, thread not started.
    Created,
    /// In or around `KVM_RUN`.
    Running,
    /// Parked outside `KVM_RUN` until resumed or stopped.
    Paused,
    /// The thread has finished.
    Stopped,
}

const REQ_RUN: u8 = 0;
const REQ_PAUSE: u8 = 1;
const REQ_STOP: u8 = 2;

/// What the VM asks of a vCPU thread, and the state it reports back.
#[derive(Debug)]
pub struct VcpuControl {
    request: AtomicU8,
    state: Mutex<VcpuState>,
    changed: Condvar,
}

impl VcpuControl {
    fn new() -> Self {
        VcpuControl {
            request: AtomicU8::new(REQ_RUN),
            state: Mutex::new(VcpuState::Created),
            changed: Condvar::new(),
        }
    }

    /// The vCPU's current state.
    pub fn state(&self) -> VcpuState {
        *kiln_devices::bus::lock(&self.state)
    }

    fn set_state(&self, s: VcpuState) {
        let mut st = kiln_devices::bus::lock(&self.state);
        if *st != s {
            *st = s;
            self.changed.notify_all();
        }
    }

    fn set_request(&self, r: u8) {
        // Take the state lock so a parked thread cannot miss the change.
        let _st = kiln_devices::bus::lock(&self.state);
        self.request.store(r, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Park the calling vCPU thread while a pause is requested.
    fn park(&self) {
        let mut st = kiln_devices::bus::lock(&self.state);
        *st = VcpuState::Paused;
        self.changed.notify_all();
        while self.request.load(Ordering::SeqCst) == REQ_PAUSE {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait until the vCPU reaches `want` (or stops).
    pub fn wait_for(&self, want: VcpuState) {
        let mut st = kiln_devices::bus::lock(&self.state);
        while *st != want && *st != VcpuState::Stopped {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What every vCPU thread of a VM shares.
pub struct VmShared {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices (PCI BARs come and go while the guest runs).
    pub mmio: Arc<Bus>,
    /// Where the first reason to stop is recorded.
    pub stop: StopLatch,
    /// HLT ends the run (VMs without an in-kernel irqchip).
    pub hlt_stops: bool,
    /// Every vCPU dumps its registers when it stops.
    pub dump_regs: bool,
    /// A triple fault is the guest's way to reset (Linux's `reboot=t`), not an error.
    pub triple_fault_resets: bool,
}

/// What a vCPU thread hands back when it ends.
#[derive(Debug, Default)]
pub struct VcpuReport {
    /// Its exits.
    pub stats: ExitStats,
    /// Its register dump, when asked for or after an abnormal stop.
    pub dump: Option<String>,
}

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = IMMEDIATE_EXIT.try_with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is set by this thread's vCPU loop to its own kvm_run
            // mapping's `immediate_exit` byte and cleared before that mapping goes away;
            // a signal handler on the same thread can only run while it is valid.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
    std::sync::atomic::fence(Ordering::SeqCst);
}

fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler);
    });
    result.map_err(|e| crate::error::VmmError::Os {
        op: "installing the vCPU kick signal handler",
        err: std::io::Error::from_raw_os_error(e.errno()),
    })
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    id: usize,
    fd: VcpuFd,
}

/// Set the TSC-deadline timer bit (CPUID.01H:ECX[24]) in `cpuid`.
pub fn advertise_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= 1 << 24;
        }
    }
}

/// Set one vCPU's CPUID: KVM's supported leaves, with this vCPU's APIC ID, the vCPU
/// count as logical processors of one package, and the hypervisor bit.
pub fn vcpu_cpuid(supported: &CpuId, id: usize, count: usize) -> CpuId {
    let mut cpuid = supported.clone();
    let shift = count.next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice() {
        match (e.function, e.index) {
            (1, _) => {
                e.ebx =
                    (e.ebx & 0x0000_FFFF) | ((id as u32) << 24) | ((count.min(255) as u32) << 16);
                e.edx |= 1 << 28; // HTT: the logical processor count is valid
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            (0xB | 0x1F, 0) => {
                // SMT level: one thread per core.
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 1, 1 << 8, id as u32);
            }
            (0xB | 0x1F, 1) => {
                // Core level: every vCPU is a core of one package.
                (e.eax, e.ebx, e.ecx, e.edx) = (shift, count as u32, 1 | (2 << 8), id as u32);
            }
            (0xB | 0x1F, _) => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, e.index, id as u32),
            _ => {}
        }
    }
    cpuid
}

impl Vcpu {
    /// Wrap a created vCPU and give it its CPUID (`count` vCPUs in the VM).
    pub fn new(id: usize, fd: VcpuFd, supported: &CpuId, count: usize) -> Result<Self> {
        fd.set_cpuid2(&vcpu_cpuid(supported, id, count))
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok(Vcpu { id, fd })
    }

    /// Prepare a vCPU for an operating-system kernel: the MSRs Linux expects from
    /// firmware, an initialized FPU, and LINT0 as ExtINT and LINT1 as NMI on the in-kernel
    /// LAPIC (kernel guests always have an irqchip). MSRs KVM refuses are skipped: a kernel
    /// copes with their defaults.
    pub fn setup_platform(&self) -> Result<()> {
        use kvm_bindings::{kvm_fpu, kvm_msr_entry, Msrs};
        let msrs: [(u32, u64); 11] = [
            (0x174, 0),             // IA32_SYSENTER_CS
            (0x175, 0),             // IA32_SYSENTER_ESP
            (0x176, 0),             // IA32_SYSENTER_EIP
            (0xC000_0081, 0),       // STAR
            (0xC000_0082, 0),       // LSTAR
            (0xC000_0083, 0),       // CSTAR
            (0xC000_0084, 0),       // SYSCALL_MASK
            (0xC000_0102, 0),       // KERNEL_GS_BASE
            (0x10, 0),              // IA32_TSC
            (0x1A0, 1),             // IA32_MISC_ENABLE: fast strings
            (0x2FF, (1 << 11) | 6), // MTRR default type: enabled, write-back
        ];
        for (index, data) in msrs {
            let entry = kvm_msr_entry {
                index,
                data,
                ..Default::default()
            };
            if let Ok(list) = Msrs::from_entries(&[entry]) {
                let _ = self.fd.set_msrs(&list);
            }
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
        let set_lvt = |regs: &mut [libc::c_char; 1024], off: usize, mode: u32| {
            let mut v = [0u8; 4];
            for (i, b) in v.iter_mut().enumerate() {
                *b = regs[off + i] as u8;
            }
            let value = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                regs[off + i] = *b as libc::c_char;
            }
        };
        set_lvt(&mut lapic.regs, 0x350, 7); // LINT0: ExtINT
        set_lvt(&mut lapic.regs, 0x360, 4); // LINT1: NMI
        self.fd
            .set_lapic(&lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Put the vCPU in the entry state `boot` describes.
    pub fn set_boot_state(&self, boot: &BootState) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        if boot.kind == EntryKind::Linux64 {
            kiln_arch::linux::set_linux64_sregs(&mut sregs, boot.cr3);
        } else {
            kiln_arch::entry::set_entry_sregs(&mut sregs, boot.mode, boot.entry, boot.cr3);
        }
        self.fd
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let mut regs = kiln_arch::entry::entry_regs(boot.mode, boot.entry)
            .map_err(|e| crate::error::VmmError::Config(e.to_string()))?;
        regs.rax = boot.rax;
        regs.rbx = boot.rbx;
        regs.rsi = boot.rsi;
        if boot.kind != EntryKind::Raw {
            regs.rsp = 0;
        }
        self.fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Start the vCPU's thread.
    pub fn start(self, shared: Arc<VmShared>) -> Result<VcpuHandle> {
        install_kick_handler()?;
        let control = Arc::new(VcpuControl::new());
        let ctl = control.clone();
        let id = self.id;
        let join = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run_loop(&shared, &ctl))
            .map_err(crate::error::os_err("starting a vCPU thread"))?;
        Ok(VcpuHandle { id, join, control })
    }

    fn dump(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format_dump(self.id, &r, &s),
            (Err(e), _) | (_, Err(e)) => {
                format!("--- vCPU {}: registers unavailable: {e} ---\n", self.id)
            }
        }
    }

    fn run_loop(mut self, shared: &VmShared, control: &VcpuControl) -> VcpuReport {
        let mut report = VcpuReport::default();
        let mut abnormal = false;
        let imm: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|p| p.set(imm));
        loop {
            match control.request.load(Ordering::SeqCst) {
                REQ_STOP => break,
                REQ_PAUSE => {
                    control.park();
                    continue;
                }
                _ => control.set_state(VcpuState::Running),
            }
            let flow = match self.fd.run() {
                Ok(exit) => handle_exit(shared, exit, &mut report.stats),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    report.stats.count("signal");
                    Flow::Continue
                }
                Err(e) => Flow::Stop(StopReason::Internal(format!("KVM_RUN failed: {e}")), true),
            };
            let flow = match flow {
                // The suberror lives in kvm_run, readable once the exit is handled.
                Flow::InternalError => {
                    Flow::Stop(StopReason::Internal(self.internal_error_detail()), true)
                }
                other => other,
            };
            if let Flow::Stop(reason, dump) = flow {
                abnormal |= dump;
                shared.stop.request(reason, self.id);
                break;
            }
        }
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        if abnormal || shared.dump_regs {
            report.dump = Some(self.dump());
        }
        control.set_state(VcpuState::Stopped);
        report
    }

    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
        // member KVM filled in; reading plain integers from it is sound.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let what = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event failure",
            4 => "unexpected exit",
            _ => "unknown",
        };
        format!("KVM internal error: {what} (suberror {suberror})")
    }
}

enum Flow {
    Continue,
    /// Stop the VM; `true` asks for a register dump.
    Stop(StopReason, bool),
    /// KVM_EXIT_INTERNAL_ERROR: stop with a dump, naming the suberror from kvm_run.
    InternalError,
}

fn action_flow(action: DeviceAction) -> Flow {
    match action {
        DeviceAction::Exit(code) => Flow::Stop(StopReason::DebugExit(code), false),
        DeviceAction::Reset => Flow::Stop(StopReason::Reset, false),
        DeviceAction::Poweroff => Flow::Stop(StopReason::Poweroff, false),
        DeviceAction::Panic => Flow::Stop(StopReason::Panic, false),
    }
}

/// Split a port access into the accesses KVM made: one of 1, 2 or 4 bytes, or for string
/// I/O (`rep ins/outs`), byte-sized pieces (KVM's element size is not exposed here).
fn pieces(len: usize) -> usize {
    if matches!(len, 1 | 2 | 4) {
        len
    } else {
        1
    }
}

fn handle_exit(shared: &VmShared, exit: VcpuExit<'_>, stats: &mut ExitStats) -> Flow {
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.count("io_in");
            if data.len() > 4 && shared.pio.read_stream(port as u64, data) {
                return Flow::Continue;
            }
            let step = pieces(data.len());
            for chunk in data.chunks_mut(step) {
                if !shared.pio.read(port as u64, chunk) {
                    chunk.fill(0xff);
                    stats.unknown(Access::PortIn, port as u64, chunk.len());
                }
            }
            Flow::Continue
        }
        VcpuExit::IoOut(port, data) => {
            stats.count("io_out");
            if data.len() > 4 {
                match shared.pio.write_stream(port as u64, data) {
                    Some(Some(action)) => return action_flow(action),
                    Some(None) => return Flow::Continue,
                    None => {}
                }
            }
            for chunk in data.chunks(pieces(data.len())) {
                match shared.pio.write(port as u64, chunk) {
                    None => stats.unknown(Access::PortOut, port as u64, chunk.len()),
                    Some(Some(action)) => return action_flow(action),
                    Some(None) => {}
                }
            }
            Flow::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.count("mmio_read");
            if !shared.mmio.read(addr, data) {
                data.fill(0xff);
                stats.unknown(Access::MmioRead, addr, data.len());
            }
            Flow::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.count("mmio_write");
            match shared.mmio.write(addr, data) {
                None => {
                    stats.unknown(Access::MmioWrite, addr, data.len());
                    Flow::Continue
                }
                Some(Some(action)) => action_flow(action),
                Some(None) => Flow::Continue,
            }
        }
        VcpuExit::Hlt => {
            stats.count("hlt");
            if shared.hlt_stops {
                Flow::Stop(StopReason::Halted, false)
            } else {
                Flow::Continue
            }
        }
        VcpuExit::Shutdown => {
            stats.count("shutdown");
            if shared.triple_fault_resets {
                Flow::Stop(StopReason::TripleFaultReset, false)
            } else {
                Flow::Stop(StopReason::TripleFault, true)
            }
        }
        VcpuExit::SystemEvent(kind, _) => {
            stats.count("system_event");
            match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Flow::Stop(StopReason::Poweroff, false),
                KVM_SYSTEM_EVENT_RESET => Flow::Stop(StopReason::Reset, false),
                KVM_SYSTEM_EVENT_CRASH => Flow::Stop(StopReason::Panic, false),
                other => Flow::Stop(
                    StopReason::Internal(format!("unknown KVM system event {other}")),
                    true,
                ),
            }
        }
        VcpuExit::InternalError => {
            stats.count("internal_error");
            Flow::InternalError
        }
        VcpuExit::FailEntry(reason, cpu) => {
            stats.count("fail_entry");
            Flow::Stop(
                StopReason::Internal(format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                )),
                true,
            )
        }
        VcpuExit::Intr => {
            stats.count("intr");
            Flow::Continue
        }
        VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) => {
            stats.count("other");
            Flow::Continue
        }
        other => {
            stats.count("unexpected");
            Flow::Stop(
                StopReason::Internal(format!("unexpected VM exit {other:?}")),
                true,
            )
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    id: usize,
    join: JoinHandle<VcpuReport>,
    control: Arc<VcpuControl>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Its state machine.
    pub fn control(&self) -> &VcpuControl {
        &self.control
    }

    fn kick(&self) {
        // A failed kick means the thread already ended; nothing to interrupt.
        let _ = self.join.kill(SIGRTMIN() + KICK_SIGNAL_OFFSET);
    }

    /// Ask the vCPU to park outside `KVM_RUN` and wait until it has.
    pub fn pause(&self) {
        self.control.set_request(REQ_PAUSE);
        self.kick();
        self.control.wait_for(VcpuState::Paused);
    }

    /// Let a paused vCPU run again.
    pub fn resume(&self) {
        self.control.set_request(REQ_RUN);
    }

    /// Ask the vCPU to stop (it leaves `KVM_RUN` at once).
    pub fn request_stop(&self) {
        self.control.set_request(REQ_STOP);
        self.kick();
    }

    /// Stop the vCPU and collect its report.
    pub fn stop(self) -> VcpuReport {
        self.request_stop();
        self.join.join().unwrap_or_else(|_| VcpuReport {
            dump: Some(format!("--- vCPU {}: thread panicked ---\n", self.id)),
            ..Default::default()
        })
    }
}
