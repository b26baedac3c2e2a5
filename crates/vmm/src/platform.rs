//! Which devices a VM gets and where: every guest has COM1, the debug-exit port and the
//! POST-code port; kernel guests (multiboot and Linux) also get the CMOS RTC, the i8042,
//! pvpanic, the PCI root bus with its i440FX-compatible host bridge (configuration
//! mechanism #1 at 0xcf8) and, with ACPI, Kiln's power device. Firmware guests also get
//! fw_cfg and the BIOS debug console, and a CMOS that tells the BIOS the memory size, CPU
//! count and boot order. Each port range is reserved in [`Resources`] before it is put on
//! the bus.

use crate::error::{os_err, Result, VmmError};
use crate::resources::Resources;
use kiln_arch::{acpi, acpi_loader};
use kiln_devices::acpi_pm::AcpiPm;
use kiln_devices::acpi_pm1::{AcpiPm1, PM1_PORTS};
use kiln_devices::boot_timer::{BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN};
use kiln_devices::bus::{Bus, SharedDevice};
use kiln_devices::cmos::{Cmos, CMOS_PORT, CMOS_PORTS};
use kiln_devices::debug_console::{DebugConsole, DEBUG_CONSOLE_PORT};
use kiln_devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use kiln_devices::fw_cfg::{FwCfg, FW_CFG_PORT, FW_CFG_PORT_LEN};
use kiln_devices::i8042::{self, I8042};
use kiln_devices::pci::config_io::{CONFIG_IO_PORT, CONFIG_IO_PORTS};
use kiln_devices::pci::{PciConfigIo, PciRoot};
use kiln_devices::post_code::{PostCode, POST_CODE_PORT};
use kiln_devices::pvpanic::{PvPanic, PVPANIC_PORT};
use kiln_devices::serial::{SerialIrq, SerialPort, COM1_PORT, UART_PORTS};
use kiln_devices::system_control::{SystemControl, SYSTEM_CONTROL_PORT};
use kvm_ioctls::VmFd;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// What kind of platform to assemble.
pub struct PlatformSpec {
    /// A kernel guest: it has an in-kernel irqchip (COM1 raises IRQ 4) and gets the RTC,
    /// i8042, pvpanic and PCI.
    pub kernel_guest: bool,
    /// Linux gets Kiln's ACPI power device.
    pub acpi: bool,
    /// The boot timer's start instant, when asked for.
    pub boot_timer: Option<std::time::Instant>,
    /// A firmware guest's extra devices.
    pub firmware: Option<FirmwareDevices>,
}

/// What only firmware guests have.
pub struct FirmwareDevices {
    /// The CMOS, with memory size, CPU count and boot order filled in.
    pub cmos: Cmos,
    /// fw_cfg with its items.
    pub fw_cfg: FwCfg,
    /// The debug console (port 0x402).
    pub debug_console: DebugConsole,
    /// The classic ACPI power registers (PM1a) the firmware's FADT names.
    pub acpi: bool,
}

/// The devices of a VM.
pub struct Platform {
    /// The PCI root bus (kernel guests).
    pub pci: Option<Arc<PciRoot>>,
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// COM1, shared with the console.
    pub serial: Arc<Mutex<SerialPort>>,
}

fn add(
    bus: &mut Bus,
    res: &mut Resources,
    name: &'static str,
    base: u64,
    len: u64,
    dev: SharedDevice,
) -> Result<()> {
    res.reserve_ports(name, base, len)?;
    bus.insert(name, base, len, dev)
        .map_err(|e| VmmError::Config(e.to_string()))
}

/// Assemble the devices; COM1 writes to `out`.
pub fn build(
    spec: PlatformSpec,
    vm_fd: &VmFd,
    res: &mut Resources,
    out: Box<dyn Write + Send>,
) -> Result<Platform> {
    let irq = if spec.kernel_guest {
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(os_err("eventfd"))?;
        vm_fd
            .register_irqfd(&evt, COM1_IRQ)
            .map_err(crate::error::kvm_err("KVM_IRQFD"))?;
        SerialIrq(Some(evt))
    } else {
        SerialIrq(None)
    };
    let serial = Arc::new(Mutex::new(SerialPort::new(irq, out)));
    let mut pio = Bus::new();
    add(
        &mut pio,
        res,
        "serial",
        COM1_PORT,
        UART_PORTS,
        serial.clone(),
    )?;
    add(
        &mut pio,
        res,
        "debug-exit",
        DEBUG_EXIT_PORT,
        1,
        Arc::new(Mutex::new(DebugExit)),
    )?;
    add(
        &mut pio,
        res,
        "post-code",
        POST_CODE_PORT,
        1,
        Arc::new(Mutex::new(PostCode::default())),
    )?;
    let mut pci = None;
    if spec.kernel_guest {
        let root = Arc::new(PciRoot::new());
        let cfg = Arc::new(Mutex::new(PciConfigIo::new(root.clone())));
        add(
            &mut pio,
            res,
            "pci-config",
            CONFIG_IO_PORT,
            CONFIG_IO_PORTS,
            cfg,
        )?;
        pci = Some(root);
        let cmos = match &spec.firmware {
            Some(f) => f.cmos.clone(),
            None => Cmos::default(),
        };
        add(
            &mut pio,
            res,
            "cmos",
            CMOS_PORT,
            CMOS_PORTS,
            Arc::new(Mutex::new(cmos)),
        )?;
        add(
            &mut pio,
            res,
            "i8042",
            i8042::DATA_PORT,
            i8042::PORTS,
            Arc::new(Mutex::new(I8042::default())),
        )?;
        add(
            &mut pio,
            res,
            "pvpanic",
            PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::default())),
        )?;
    }
    if let Some(f) = spec.firmware {
        add(
            &mut pio,
            res,
            "sys-control",
            SYSTEM_CONTROL_PORT,
            1,
            Arc::new(Mutex::new(SystemControl::default())),
        )?;
        add(
            &mut pio,
            res,
            "fw-cfg",
            FW_CFG_PORT,
            FW_CFG_PORT_LEN,
            Arc::new(Mutex::new(f.fw_cfg)),
        )?;
        add(
            &mut pio,
            res,
            "bios-debug",
            DEBUG_CONSOLE_PORT,
            1,
            Arc::new(Mutex::new(f.debug_console)),
        )?;
        if f.acpi {
            add(
                &mut pio,
                res,
                "acpi-pm1",
                acpi_loader::PM1A_EVT_BLK.into(),
                PM1_PORTS,
                Arc::new(Mutex::new(AcpiPm1::new(acpi::S5_SLP_TYP))),
            )?;
        }
    }
    let mmio = Arc::new(Bus::new());
    if let Some(start) = spec.boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(start)));
        res.reserve_mmio("boot-timer", BOOT_TIMER_ADDR, BOOT_TIMER_LEN)?;
        mmio.insert("boot-timer", BOOT_TIMER_ADDR, BOOT_TIMER_LEN, timer)
            .map_err(|e| VmmError::Config(e.to_string()))?;
    }
    if spec.acpi {
        let pm = AcpiPm::new(acpi::S5_SLP_TYP, acpi::RESET_VALUE);
        add(
            &mut pio,
            res,
            "acpi-pm",
            acpi::PM_PORT,
            acpi::PM_PORTS,
            Arc::new(Mutex::new(pm)),
        )?;
    }
    Ok(Platform {
        pci,
        pio,
        mmio,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use kiln_devices::{acpi_pm, pvpanic};

    #[test]
    fn acpi_tables_and_devices_agree() {
        use kiln_arch::acpi;
        assert_eq!(acpi::SLEEP_CONTROL, acpi_pm::SLEEP_CONTROL);
        assert_eq!(acpi::SLEEP_STATUS, acpi_pm::SLEEP_STATUS);
        assert_eq!(acpi::RESET_REGISTER, acpi_pm::RESET_REGISTER);
        assert_eq!(acpi::SLP_EN, acpi_pm::SLP_EN);
        assert_eq!(acpi::PVPANIC_PORT as u64, pvpanic::PVPANIC_PORT);
    }
}
