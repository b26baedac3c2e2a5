//! The one owner of KVM's GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so whoever changes one route must
//! re-install all of them: the in-kernel irqchip's routes for GSI 0-23 (exactly KVM's
//! default table: GSI 0-15 to the PIC and the IOAPIC pin of the same number, 16-23 to the
//! IOAPIC) plus every MSI route devices have asked for. Everything goes through
//! [`GsiRouting`].

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// GSIs the IOAPIC has; MSI routes use the GSIs above.
pub const IOAPIC_PINS: u32 = 24;

/// The routing table.
pub struct GsiRouting {
    vm_fd: Arc<VmFd>,
    msi: BTreeMap<u32, (u64, u32)>,
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

impl GsiRouting {
    /// The table of a VM with an in-kernel irqchip (KVM starts with the default routes).
    pub fn new(vm_fd: Arc<VmFd>) -> Self {
        GsiRouting {
            vm_fd,
            msi: BTreeMap::new(),
        }
    }

    /// Route `gsi` (>= [`IOAPIC_PINS`]) to an MSI message and install the table.
    pub fn set_msi(&mut self, gsi: u32, addr: u64, data: u32) -> io::Result<()> {
        if gsi < IOAPIC_PINS {
            return Err(io::Error::other(format!("GSI {gsi} belongs to the IOAPIC")));
        }
        let old = self.msi.insert(gsi, (addr, data));
        if old == Some((addr, data)) {
            return Ok(());
        }
        self.install().inspect_err(|_| {
            match old {
                Some(o) => self.msi.insert(gsi, o),
                None => self.msi.remove(&gsi),
            };
        })
    }

    /// The table as KVM gets it.
    fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                v.push(irqchip_entry(gsi, chip, gsi % 8));
            }
        }
        for (&gsi, &(addr, data)) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = addr as u32;
            e.u.msi.address_hi = (addr >> 32) as u32;
            e.u.msi.data = data;
            v.push(e);
        }
        v
    }

    fn install(&self) -> io::Result<()> {
        let table = KvmIrqRouting::from_entries(&self.entries())
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm_fd
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_irqchip_routes() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let mut r = GsiRouting::new(vm);
        assert!(r.set_msi(5, 0xfee0_0000, 0x41).is_err());
        r.set_msi(24, 0xfee0_0000, 0x41).unwrap();
        r.set_msi(25, 0xfee0_1000, 0x42).unwrap();
        let e = r.entries();
        assert_eq!(e.len(), 24 + 16 + 2);
        // SAFETY: `type_` says which union member the entry uses.
        let (pin0, msi) = unsafe { (e[1].u.irqchip, e[e.len() - 1].u.msi) };
        assert_eq!(
            (e[1].gsi, pin0.irqchip, pin0.pin),
            (0, KVM_IRQCHIP_PIC_MASTER, 0)
        );
        assert_eq!((msi.address_lo, msi.data), (0xfee0_1000, 0x42));
    }
}
