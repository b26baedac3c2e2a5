//! `kiln img snapshot` and the snapshot part of `kiln img info` against qemu-img 10: the
//! same table and JSON, snapshots that qemu-img applies to the expected bytes, and one
//! clear error line (status 1) for unknown snapshots and formats without snapshots.

mod common;

use common::{run, Scratch};
use std::process::Command;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img is needed for these tests (apt-get install qemu-utils): {e}")
        });
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn qemu_io(img: &str, cmd: &str) {
    let st = Command::new("qemu-io")
        .args(["-c", cmd, img])
        .output()
        .expect("qemu-io is needed for these tests")
        .status;
    assert!(st.success(), "qemu-io {cmd}");
}

/// The image's guest view, by qemu-img.
fn qemu_view(s: &Scratch, img: &str) -> Vec<u8> {
    let out = s.dir.path().join("view.raw");
    qemu_img(&["convert", "-O", "raw", img, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

#[test]
fn list_and_info_match_qemu_img_exactly() {
    let s = Scratch::new();
    let img = s.dir.path().join("a.qcow2").to_str().unwrap().to_string();
    qemu_img(&["create", "-f", "qcow2", &img, "10M"]);
    // No snapshots: nothing listed, and no "snapshots" key.
    let r = run(&["img", "snapshot", "-l", &img]);
    r.expect_code(0);
    assert_eq!(r.stdout, qemu_img(&["snapshot", "-l", &img]));
    let r = run(&["img", "info", "--output", "json", &img]);
    assert!(json(&r.stdout).get("snapshots").is_none(), "{}", r.stdout);
    qemu_io(&img, "write -P 1 0 64k");
    qemu_img(&["snapshot", "-c", "first", &img]);
    qemu_io(&img, "write -P 2 64k 64k");
    qemu_img(&["snapshot", "-c", "second snap", &img]);
    let r = run(&["img", "snapshot", "-l", &img]);
    r.expect_code(0);
    assert_eq!(r.stdout, qemu_img(&["snapshot", "-l", &img]));
    assert!(r.stdout.starts_with("Snapshot list:\nID"), "{}", r.stdout);
    // The default operation is -l.
    assert_eq!(run(&["img", "snapshot", &img]).stdout, r.stdout);
    // info: the same table in the human form, the same "snapshots" value in JSON.
    let ours = run(&["img", "info", &img]);
    ours.expect_code(0);
    assert!(ours.stdout.contains(&r.stdout), "{}", ours.stdout);
    let theirs = qemu_img(&["info", &img]);
    let table_at = theirs.find("Snapshot list:").unwrap();
    assert!(ours
        .stdout
        .contains(&theirs[table_at..theirs.find("Format specific").unwrap()]));
    let ours = json(&run(&["img", "info", "--output", "json", &img]).stdout);
    let theirs = json(&qemu_img(&["info", "--output", "json", &img]));
    assert_eq!(ours["snapshots"], theirs["snapshots"]);
    let r = run(&["img", "snapshot", "-l", "--output", "json", &img]);
    assert_eq!(json(&r.stdout), theirs["snapshots"]);
    // Key order as qemu-img prints it (from "snapshots" to "virtual-size").
    let keys = |t: &str| -> Vec<String> {
        let t = &t[t.find("\"snapshots\"").unwrap()..];
        let t = &t[..t.find("\"virtual-size\"").unwrap()];
        t.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"'))
            .map(|l| l.split(':').next().unwrap().to_string())
            .collect()
    };
    let ours = run(&["img", "info", "--output", "json", &img]).stdout;
    let theirs = qemu_img(&["info", "--output", "json", &img]);
    assert_eq!(keys(&ours), keys(&theirs));
}

#[test]
fn create_apply_delete_round_trip_through_qemu_img() {
    let s = Scratch::new();
    let img = s.dir.path().join("k.qcow2").to_str().unwrap().to_string();
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        &img,
        "2M",
    ])
    .expect_code(0);
    run(&[
        "img",
        "write",
        &img,
        "0",
        "--pattern",
        "5",
        "--length",
        "300k",
    ])
    .expect_code(0);
    run(&["img", "snapshot", "-c", "base", &img]).expect_code(0);
    let base = qemu_view(&s, &img);
    run(&[
        "img",
        "write",
        &img,
        "100k",
        "--pattern",
        "6",
        "--length",
        "50k",
    ])
    .expect_code(0);
    run(&["img", "snapshot", "-c", "later", &img]).expect_code(0);
    let later = qemu_view(&s, &img);
    run(&[
        "img",
        "write",
        &img,
        "1M",
        "--pattern",
        "7",
        "--length",
        "4k",
    ])
    .expect_code(0);
    assert_eq!(
        Command::new("qemu-img")
            .args(["check", &img])
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let list = qemu_img(&["snapshot", "-l", &img]);
    assert!(
        list.contains(" base ") && list.contains(" later "),
        "{list}"
    );
    // Apply by ID, then by name.
    run(&["img", "snapshot", "-a", "1", &img]).expect_code(0);
    assert_eq!(qemu_view(&s, &img), base);
    run(&["img", "snapshot", "-a", "later", &img]).expect_code(0);
    assert_eq!(qemu_view(&s, &img), later);
    // qemu-img applies what Kiln made.
    let copy = s.dir.path().join("c.qcow2").to_str().unwrap().to_string();
    std::fs::copy(&img, &copy).unwrap();
    qemu_img(&["snapshot", "-a", "base", &copy]);
    assert_eq!(qemu_view(&s, &copy), base);
    // Delete by name, and by ID when no name matches.
    run(&["img", "snapshot", "-d", "base", &img]).expect_code(0);
    run(&["img", "snapshot", "-d", "2", &img]).expect_code(0);
    assert_eq!(qemu_img(&["snapshot", "-l", &img]), "");
    assert_eq!(
        Command::new("qemu-img")
            .args(["check", &img])
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    assert_eq!(qemu_view(&s, &img), later);
    // Errors: one line, status 1.
    run(&["img", "snapshot", "-a", "nope", &img]).expect_error("snapshot not found");
    run(&["img", "snapshot", "-d", "nope", &img]).expect_error("snapshot not found");
    let raw = s.file("r.raw", &[0u8; 4096]);
    run(&["img", "snapshot", "-c", "x", &raw]).expect_error("does not support internal snapshots");
    run(&["img", "snapshot", "-f", "raw", "-a", "x", &raw]).expect_error("does not support");
    let r = run(&["img", "snapshot", "-l", &raw]);
    r.expect_code(0);
    assert_eq!(r.stdout, "");
}

#[test]
fn old_entries_without_icount_and_with_vm_state_list_like_qemu_img() {
    let s = Scratch::new();
    let img = s.dir.path().join("v2.qcow2").to_str().unwrap().to_string();
    qemu_img(&["create", "-f", "qcow2", "-o", "compat=0.10", &img, "1M"]);
    qemu_img(&["snapshot", "-c", "a-very-long-snapshot-name", &img]);
    // Rewrite the entry as an older QEMU would: 16 bytes of extra data (no icount), with
    // a VM state and a guest clock.
    let mut f = std::fs::read(&img).unwrap();
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let off = be(&f[64..72]) as usize;
    let e = f[off..off + 40].to_vec();
    let xs = u32::from_be_bytes(e[36..40].try_into().unwrap()) as usize;
    let idl = u16::from_be_bytes([e[12], e[13]]) as usize;
    let nl = u16::from_be_bytes([e[14], e[15]]) as usize;
    let names = f[off + 40 + xs..off + 40 + xs + idl + nl].to_vec();
    let mut new = e[..24].to_vec();
    new.extend_from_slice(&3_725_500_000_000u64.to_be_bytes());
    new.extend_from_slice(&5000u32.to_be_bytes());
    new.extend_from_slice(&16u32.to_be_bytes());
    new.extend_from_slice(&5000u64.to_be_bytes());
    new.extend_from_slice(&(1u64 << 20).to_be_bytes());
    new.extend_from_slice(&names);
    new.extend_from_slice(&[0; 8]);
    f[off..off + new.len()].copy_from_slice(&new);
    std::fs::write(&img, f).unwrap();
    let r = run(&["img", "snapshot", "-l", &img]);
    r.expect_code(0);
    assert_eq!(r.stdout, qemu_img(&["snapshot", "-l", &img]));
    assert!(
        r.stdout.contains("0001:02:05.500         --"),
        "{}",
        r.stdout
    );
    let ours = json(&run(&["img", "info", "--output", "json", &img]).stdout);
    let theirs = json(&qemu_img(&["info", "--output", "json", &img]));
    assert_eq!(ours["snapshots"], theirs["snapshots"]);
    assert!(ours["snapshots"][0].get("icount").is_none());
}
