//! `kiln kvm` and the binary invoked as `kvm`: QEMU's classic command line boots the same
//! guest `kiln run` boots (a multiboot kernel built by the project, on this machine's KVM),
//! and options outside the supported subset are one clear line with status 1.

mod common;
use common::*;
use std::process::Stdio;

/// The multiboot guest's report for a 64 MiB guest given `cmdline`.
fn expect_multiboot_report(r: &Run, cmdline: &str) {
    r.expect_code(33);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"multiboot: magic=ok"), "{r:#?}");
    assert!(lines.contains(&"mem_lower=639 mem_upper=64512"), "{r:#?}");
    assert!(
        lines.contains(&format!("cmdline={cmdline}").as_str()),
        "{r:#?}"
    );
    assert_eq!(lines.last(), Some(&"multiboot: done"), "{r:#?}");
}

#[test]
fn kiln_kvm_boots_a_pasted_classic_command_line() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("kernel", kiln_guests::MULTIBOOT_ELF);
    let r = run(&[
        "kvm",
        "-m",
        "64",
        "-smp",
        "1",
        "-kernel",
        &k,
        "-append",
        "console=ttyS0 via=kvm",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-enable-kvm",
        "-cpu",
        "host",
    ]);
    expect_multiboot_report(&r, "console=ttyS0 via=kvm");
}

#[test]
fn a_symlink_named_kvm_is_kiln_kvm() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("kernel", kiln_guests::MULTIBOOT_ELF);
    let link = s.dir.path().join("kvm");
    std::os::unix::fs::symlink(kiln_bin(), &link).unwrap();
    let child = std::process::Command::new(&link)
        .args([
            "-m",
            "64M",
            "-kernel",
            &k,
            "-append",
            "as=kvm",
            "-machine",
            "pc,acpi=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KILN_KVM_DEVICE")
        .spawn()
        .unwrap();
    let r = wait(child, std::time::Duration::from_secs(60));
    expect_multiboot_report(&r, "as=kvm");
}

#[test]
fn unsupported_or_wrong_options_are_one_line() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["kvm", "-cdrom", "guestos.iso"],
            "--cdrom: guestos.iso: No such file or directory",
        ),
        (
            &["kvm", "-usbdevice", "tablet"],
            "-usbdevice is not a supported QEMU option",
        ),
        (
            &["kvm", "-serial", "pty"],
            "Kiln's serial port is always stdio",
        ),
        (&["kvm", "vm-disk.img"], "'vm-disk.img' is not an option"),
        (&["kvm", "-m"], "-m needs a size"),
        (&["kvm", "-m", "lots"], "'lots' is not a memory size"),
    ];
    for (args, needle) in cases {
        run(args).expect_error(needle);
    }
    let help = run(&["kvm", "-help"]);
    help.expect_code(0);
    assert!(help.stdout.contains("-append STRING"), "{help:#?}");
}
