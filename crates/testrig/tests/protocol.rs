//! The rig's batch protocol end to end, on whichever host `Host::detect` picks (on a
//! machine without hardware virtualization: one L1 boot). `/bin/sh` stands in for kiln:
//! it is dynamically linked (so L1 needs its `ldd` libraries) and can print anything.
//! A run of another carried program, reading a carried file, checks `RunSpec::program`,
//! `Batch::carry_program` and `Batch::carry_file`.

use kiln_testrig::{Batch, Host, RunSpec};
use std::path::PathBuf;

/// A dynamically linked program other than the batch's "kiln", carried into L1.
const SHA256SUM: &str = "/usr/bin/sha256sum";

#[test]
fn binary_output_input_files_arguments_and_timeouts_survive_the_batch() {
    let host = Host::detect().unwrap_or_else(|e| panic!("{e}"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
    let manifest = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
    let batch = Batch::new("/bin/sh")
        .run(
            RunSpec::new(
                "io",
                ["-c", "cat; cat \"$1\" >&2; exit 7", "sh", "{file:data}"],
            )
            .file("data", binary.clone())
            .stdin("line1\r\nno newline at the end"),
        )
        .run(
            RunSpec::new("host-file", ["-c", "cat \"$0\"", "{file:manifest}"])
                .file("manifest", manifest.clone()),
        )
        .run(
            RunSpec::new(
                "args",
                [
                    "-c",
                    "printf '%s|' \"$@\"",
                    "sh",
                    "it's",
                    "a  b",
                    "$HOME",
                    "",
                    "--x={file:m}",
                ],
            )
            .file("m", "x"),
        )
        .run(RunSpec::new("timeout", ["-c", "exec sleep 60"]).timeout_secs(2))
        .run(RunSpec::new("silent", ["-c", "kill -9 $$"]))
        .carry_program(SHA256SUM)
        .carry_file(&manifest)
        .run(RunSpec::new("carried", [manifest.to_string_lossy().into_owned()]).program(SHA256SUM));
    let r = batch.execute(&host).unwrap_or_else(|e| panic!("{e}"));

    let io = r.run("io");
    assert_eq!(io.status, Some(7), "{io:?}");
    assert_eq!(io.stdout, b"line1\r\nno newline at the end");
    assert!(
        io.stderr == binary,
        "stderr differs: {} bytes",
        io.stderr.len()
    );
    assert_eq!(r.run("host-file").stdout, std::fs::read(&manifest).unwrap());
    let args = r.run("args").stdout_text();
    assert!(args.starts_with("it's|a  b|$HOME||--x=/"), "{args}");
    let timeout = r.run("timeout");
    assert_eq!(timeout.status, None, "{timeout:?}");
    assert!(
        timeout.seconds >= 1.9 && timeout.seconds < 30.0,
        "{timeout:?}"
    );
    assert_eq!(r.run("silent").status, Some(137));
    assert_eq!(r.run("silent").stdout, b"");
    let want = std::process::Command::new(SHA256SUM)
        .arg(&manifest)
        .output()
        .unwrap()
        .stdout;
    let carried = r.run("carried");
    assert_eq!(carried.status, Some(0), "{carried:?}");
    assert_eq!(carried.stdout_text(), String::from_utf8_lossy(&want));
    if host.is_rig() {
        assert!(r.boot_seconds.is_some());
        assert!(r
            .l1_console
            .as_deref()
            .unwrap()
            .contains("KILN-RIG-KVM-READY"));
    }
}
