//! The Debian artifacts are what the rig and the Linux tests expect: real bzImages, an
//! ELF vmlinux, uncompressed KVM, tun and virtio modules, a static busybox, and a reusable
//! cache.

use kiln_testrig::artifacts::{generic_kernel, Artifacts};
use kiln_testrig::bzimage::SetupHeader;
use std::time::Instant;

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn cloud_kernel_modules_and_busybox() {
    let a = Artifacts::get().unwrap_or_else(|e| panic!("{e}"));
    let h = SetupHeader::parse(&read(&a.bzimage)).unwrap();
    assert!(h.version >= 0x020c, "boot protocol {:#x}", h.version);
    assert!(a.kernel_version.ends_with("-cloud-amd64"), "{a:?}");
    assert!(a.kernel_package.0.starts_with("linux-image-"), "{a:?}");
    assert_eq!(&read(&a.vmlinux)[..4], b"\x7fELF");
    let names: Vec<_> = a
        .modules
        .iter()
        .map(|m| m.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["irqbypass.ko", "kvm.ko", "kvm-amd.ko", "tun.ko"]);
    assert_eq!(a.virtio_modules.len(), 14);
    for m in a.modules.iter().chain(&a.virtio_modules) {
        assert_eq!(
            &read(m)[..4],
            b"\x7fELF",
            "{} is not an uncompressed module",
            m.display()
        );
    }
    assert_eq!(&read(&a.busybox)[..4], b"\x7fELF");
    // Cached now: a second call must not touch apt.
    let t = Instant::now();
    assert_eq!(Artifacts::get().unwrap(), a);
    assert!(t.elapsed().as_secs_f64() < 1.0, "cache not reused");
}

#[test]
fn generic_kernel_is_a_bzimage() {
    let g = generic_kernel().unwrap_or_else(|e| panic!("{e}"));
    assert!(SetupHeader::parse(&read(&g.bzimage)).is_ok());
    assert!(
        g.kernel_version.ends_with("-amd64") && !g.kernel_version.contains("cloud"),
        "{g:?}"
    );
}
