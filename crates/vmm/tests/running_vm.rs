//! The library API on a running VM: memory slots added, made read-only and removed while
//! the vCPU runs (the guest observes each change), and vCPUs paused and resumed.

use kiln_arch::CpuMode;
use kiln_vmm::memory::Slot;
use kiln_vmm::vcpu::VcpuState;
use kiln_vmm::{GuestConfig, LoadSource, LoadSpec, StopReason, Vm, VmConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn wait_for(&self, what: &str) {
        let start = Instant::now();
        while !self.text().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "guest never printed {what:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn probe_config() -> VmConfig {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
    let mut config = VmConfig::new(GuestConfig::Raw {
        loads: vec![LoadSpec {
            source: LoadSource::Bytes {
                name: "slot probe".into(),
                data: kiln_guests::SLOT_PROBE.to_vec(),
            },
            addr: 0x10_0000,
        }],
        entry: None,
        mode: CpuMode::Protected,
    });
    config.memory = 16 << 20;
    config.forward_stdin = false;
    config
}

const SLOT_GPA: u64 = 0x200_0000;

#[test]
fn slots_change_while_the_guest_runs_and_vcpus_pause() {
    let console = Console::default();
    let vm = Vm::build_with_console(&probe_config(), Box::new(console.clone())).unwrap();
    let slots = vm.slots();
    let running = vm.start().unwrap();
    assert!(running
        .vcpu_states()
        .iter()
        .all(|s| *s != VcpuState::Stopped));

    // Backing for the new slot: zero at first, so the guest keeps spinning.
    let extra = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(SLOT_GPA), 4096)]).unwrap();
    let host = extra.get_host_address(GuestAddress(SLOT_GPA)).unwrap() as u64;
    extra
        .write_obj(0x5555_5555u32, GuestAddress(SLOT_GPA + 4))
        .unwrap();
    let id = slots
        .lock()
        .unwrap()
        .add(Slot {
            gpa: SLOT_GPA,
            size: 4096,
            host_addr: host,
            readonly: false,
        })
        .unwrap();
    slots.lock().unwrap().set_readonly(id, true).unwrap();
    assert!(slots.lock().unwrap().slots()[&id].readonly);

    // Paused, the guest cannot see the magic.
    running.pause();
    assert_eq!(running.vcpu_states(), vec![VcpuState::Paused]);
    extra
        .write_obj(0x4b49_4c4eu32, GuestAddress(SLOT_GPA))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console.text(), "", "a paused vCPU ran");
    running.resume();

    // Resumed, it sees the magic, finds its write refused, and says so.
    console.wait_for("1");
    assert_eq!(running.vcpu_states(), vec![VcpuState::Running]);
    let value: u32 = extra.read_obj(GuestAddress(SLOT_GPA + 4)).unwrap();
    assert_eq!(value, 0x5555_5555, "the read-only slot took a write");

    slots.lock().unwrap().remove(id).unwrap();
    let outcome = running.wait().unwrap();
    assert_eq!(outcome.reason, StopReason::DebugExit(0x21), "{outcome:?}");
    assert_eq!(outcome.exit_status, 0x21);
    assert!(outcome.stats.by_reason["mmio_read"] > 0);
    assert!(
        outcome.stats.by_reason["mmio_write"] >= 1,
        "the refused write exited"
    );
}

#[test]
fn a_running_vm_can_be_stopped_from_outside() {
    let vm = Vm::build_with_console(&probe_config(), Box::new(std::io::sink())).unwrap();
    let running = vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    running.request_stop(StopReason::UserQuit);
    let outcome = running.wait().unwrap();
    assert_eq!(outcome.reason, StopReason::UserQuit);
    assert_eq!(outcome.exit_status, 0);
}
