//! /dev/kvm preflight: each way the device can be unusable gives one clear line and
//! status 1. (API-version and capability checks are unit-tested through the `KvmSystem`
//! trait in kiln-vmm, since a real KVM cannot be made to answer otherwise.)

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn missing_device_via_environment() {
    let r = wait(
        kiln(&["run"])
            .env("KILN_KVM_DEVICE", "/nonexistent/kvm")
            .spawn()
            .unwrap(),
        DEADLINE,
    );
    r.expect_error("/nonexistent/kvm does not exist: KVM is not available");
}

#[test]
fn missing_device_via_hidden_flag() {
    run(&["run", "--kvm-device", "/nonexistent/kvm"])
        .expect_error("/nonexistent/kvm does not exist");
}

#[test]
fn a_character_device_that_is_not_kvm() {
    run(&["run", "--kvm-device", "/dev/null"])
        .expect_error("/dev/null is not a KVM device (it does not answer KVM_GET_API_VERSION)");
}

#[test]
fn a_regular_file_is_not_kvm() {
    let s = Scratch::new();
    let f = s.file("kvm", b"");
    run(&["run", "--kvm-device", &f]).expect_error("is not a KVM device (not a character device)");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Root ignores file modes, so the permission error is produced as an unprivileged uid
/// (setpriv) on a KVM device node with mode 0600 made for the test.
#[test]
fn no_permission_as_an_unprivileged_user() {
    require_kvm();
    assert!(
        is_root(),
        "this test makes a device node and drops privileges: run the suite as root"
    );
    // The node lives under target/ (a disk mount that honours device nodes), in a
    // directory everyone may enter, like the kiln binary itself.
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    for p in [dir.path(), base] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let node = dir.path().join("kvm");
    let st = std::process::Command::new("mknod")
        .args([node.to_str().unwrap(), "c", "10", "232"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod failed");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        kiln_bin(),
        "run",
        "--kvm-device",
    ])
    .arg(&node)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let r = wait(c.spawn().expect("setpriv (util-linux) is needed"), DEADLINE);
    r.expect_error(&format!(
        "no permission to open {} (crw------- root:root): make it group-accessible",
        node.display()
    ));
    assert!(
        r.stderr.contains("add your user to the 'kvm' group"),
        "{r:#?}"
    );
}
