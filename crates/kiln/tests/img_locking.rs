//! Image locking shared with QEMU: while qemu-io or a QEMU-style user has an image open
//! for writing, `kiln img` neither writes it nor reads it (unless `-U`); while a Kiln VM
//! runs, qemu-img and QEMU's VM refuse its disks the same way, and the backing file stays
//! readable. Nothing is written to an image that was refused.

mod common;

use common::{kiln, require_kvm, run, which, Scratch};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `qemu-io` holding `img` open for writing, as a VM would: returned once it has read
/// from it (so its locks are in place). Dropping its stdin lets it exit.
fn qemu_io_holding(img: &str, format: &str) -> Child {
    let mut child = Command::new(which("qemu-io"))
        .args(["-f", format, img])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-io (apt-get install qemu-utils)");
    writeln!(child.stdin.as_mut().unwrap(), "read 0 512").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("read 512/512 bytes") {
            // Keep draining its output, so it never dies of a closed pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return child;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("qemu-io did not open {img}: {seen}");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new(which("qemu-img")).args(args).output().unwrap()
}

#[test]
fn kiln_img_respects_qemu_ios_locks_and_u_reads_anyway() {
    let s = Scratch::new();
    let img = s
        .dir
        .path()
        .join("busy.qcow2")
        .to_str()
        .unwrap()
        .to_string();
    let out = s.dir.path().join("out.raw").to_str().unwrap().to_string();
    run(&["img", "create", "-f", "qcow2", &img, "4M"]).expect_code(0);
    run(&[
        "img",
        "write",
        &img,
        "0",
        "--pattern",
        "7",
        "--length",
        "64k",
    ])
    .expect_code(0);
    let before = std::fs::read(&img).unwrap();

    let mut holder = qemu_io_holding(&img, "qcow2");
    let busy = r#"in use by another process (failed to get shared "write" lock)"#;
    run(&["img", "info", &img]).expect_error(busy);
    run(&["img", "check", &img]).expect_error(busy);
    run(&["img", "map", &img]).expect_error(busy);
    run(&["img", "convert", "-O", "raw", &img, &out]).expect_error(busy);
    run(&["img", "snapshot", "-l", &img]).expect_error(busy);
    let write_lock = r#"in use by another process (failed to get "write" lock)"#;
    run(&[
        "img",
        "write",
        &img,
        "0",
        "--pattern",
        "1",
        "--length",
        "512",
    ])
    .expect_error(write_lock);
    run(&["img", "snapshot", "-c", "s1", &img]).expect_error(write_lock);
    run(&["img", "resize", &img, "8M"]).expect_error(write_lock);
    run(&["img", "check", "-r", "all", &img]).expect_error(write_lock);
    run(&["img", "check", "-U", "-r", "leaks", &img])
        .expect_error("force-share (-U) can only be used with read-only images");

    // -U reads what is there.
    let info = run(&["img", "info", "-U", "--output", "json", &img]);
    info.expect_code(0);
    assert!(
        info.stdout.contains("\"virtual-size\": 4194304"),
        "{info:#?}"
    );
    run(&["img", "check", "-U", &img]).expect_code(0);
    run(&["img", "convert", "-U", "-O", "raw", &img, &out]).expect_code(0);
    let raw = std::fs::read(&out).unwrap();
    assert!(raw[..65536].iter().all(|&b| b == 7) && raw[65536..].iter().all(|&b| b == 0));
    run(&["img", "compare", "-U", &img, &out]).expect_code(0);
    run(&["img", "read", "-U", &img, "0", "4"]).expect_code(0);

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "a refused command changed the image"
    );
    // Free again: the writers work, and qemu-img agrees the image is sound.
    run(&["img", "snapshot", "-c", "s1", &img]).expect_code(0);
    assert_eq!(qemu_img(&["check", &img]).status.code(), Some(0));
}

#[test]
fn qemu_refuses_the_disks_of_a_running_kiln_vm() {
    require_kvm();
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    let (base, overlay, raw) = (p("base.qcow2"), p("overlay.qcow2"), p("data.raw"));
    run(&["img", "create", "-f", "qcow2", &base, "4M"]).expect_code(0);
    run(&[
        "img", "create", "-f", "qcow2", "-b", &base, "-F", "qcow2", &overlay,
    ])
    .expect_code(0);
    run(&["img", "create", "-f", "raw", &raw, "1M"]).expect_code(0);
    // SeaBIOS finds nothing to boot and waits: the VM keeps its disks open until killed.
    let mut vm = kiln(&[
        "run",
        "--bios",
        "-m",
        "64M",
        "--disk",
        &format!("path={overlay}"),
        "--disk",
        &format!("path={raw},format=raw"),
    ])
    .spawn()
    .unwrap();
    // The disks are open (and locked) before the guest runs; wait for SeaBIOS's banner,
    // and keep draining the console so the VM never blocks on it.
    let mut stdout = vm.stdout.take().unwrap();
    let (started, banner) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("SeaBIOS (version") {
                let _ = started.send(());
                all.clear();
            }
        }
    });
    banner
        .recv_timeout(Duration::from_secs(60))
        .expect("the VM did not start SeaBIOS");

    let info = qemu_img(&["info", &overlay]);
    assert_eq!(info.status.code(), Some(1), "{info:?}");
    let err = String::from_utf8_lossy(&info.stderr);
    assert!(err.contains("Failed to get shared \"write\" lock"), "{err}");
    assert_eq!(qemu_img(&["info", "-U", &overlay]).status.code(), Some(0));
    // Readers share the backing file.
    assert_eq!(qemu_img(&["info", &base]).status.code(), Some(0));
    let snap = qemu_img(&["snapshot", "-c", "s1", &overlay]);
    assert!(
        String::from_utf8_lossy(&snap.stderr).contains("Failed to get \"write\" lock"),
        "{snap:?}"
    );
    let resize = qemu_img(&["resize", "-f", "raw", &raw, "2M"]);
    assert_eq!(resize.status.code(), Some(1), "{resize:?}");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1 << 20);
    // Kiln's own tools see the same locks.
    run(&[
        "img",
        "write",
        &raw,
        "0",
        "--pattern",
        "1",
        "--length",
        "512",
    ])
    .expect_error(r#"failed to get "write" lock"#);

    vm.kill().unwrap();
    vm.wait().unwrap();
    assert_eq!(qemu_img(&["check", &overlay]).status.code(), Some(0));
    assert_eq!(
        qemu_img(&["snapshot", "-c", "s1", &overlay]).status.code(),
        Some(0)
    );
}
