//! virtio-vsock with Firecracker's Unix-socket backend, on a real KVM (directly, or in the
//! rig): Debian's kernel loads its own vsock modules; `vsock_echo` (a static test program,
//! kiln-testrig's progs) runs on both sides. Host to guest: a host program connects to
//! Kiln's socket, says `CONNECT 1234`, gets `OK`, and 1 MiB goes through the guest's echo
//! server and back, byte-exact. Guest to host: the guest connects to CID 2 port 5000, Kiln
//! connects to `<socket>_5000` where a host echo server listens, 1 MiB both ways. A
//! CONNECT to a port nobody listens on in the guest is refused (the host socket closes).

use kiln_testrig::artifacts::VIRTIO_PCI_MODULE_NAMES;
use kiln_testrig::initramfs::{add_modules, guest_initramfs};
use kiln_testrig::progs::{self, Prog};
use kiln_testrig::{Artifacts, Batch, Host, RunResult, RunSpec};

/// The guest: load vsock, report the device, listen on 1234, connect to the host's 5000.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod /m/$m.ko || echo "insmod-failed=$m"; done
n=0; while [ ! -e /dev/vsock ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
for d in /sys/bus/virtio/devices/*; do
    echo "virtio-device=$(cat $d/device) features=$(cat $d/features) driver=$(basename $(readlink $d/driver))"
done
/vsock_echo local-cid
/vsock_echo listen 1234 1 > /tmp/listen.out &
l=$!
n=0; while ! grep -q vsock-listening /tmp/listen.out && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
echo guest-listening
/vsock_echo connect 2 5000 1048576
wait $l
cat /tmp/listen.out
poweroff -f
"#;

/// L1 (or this host): an echo server on `<socket>_5000`, Kiln, then the host-initiated
/// connections once the guest listens.
const HOST: &str = r#"
dir=/tmp/kiln-vsock-$$
mkdir -p $dir
ve=$dir/vsock_echo
cp {file:vsock_echo} $ve && chmod 755 $ve
$ve uds-listen $dir/v.sock_5000 1 > $dir/host-listen.out &
{kiln} run --kernel {file:bzimage} --initrd {file:initrd} -m 256M --cpus 2 \
    --vsock cid=7,uds=$dir/v.sock --trace-exits \
    --cmdline "console=ttyS0 quiet panic=-1" > $dir/out 2> $dir/err &
k=$!
n=0; while kill -0 $k 2>/dev/null && ! grep -q guest-listening $dir/out && [ $n -lt 1200 ]; do
    sleep 0.05; n=$((n+1))
done
$ve uds-connect $dir/v.sock 4321 16 > $dir/refused.out
$ve uds-connect $dir/v.sock 1234 1048576 > $dir/host-connect.out
wait $k
st=$?
cat $dir/out
cat $dir/err >&2
echo "host-connect: $(cat $dir/host-connect.out)"
echo "host-listen: $(cat $dir/host-listen.out | tr '\n' ' ')"
echo "refused: $(cat $dir/refused.out)"
rm -rf $dir
exit $st
"#;

fn line_with<'a>(out: &'a str, r: &RunResult, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{}: no line with {needle:?} in:\n{out}", r.name))
}

#[test]
fn vsock_echo_both_ways_through_the_unix_socket() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM for this test: {e}"));
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    let echo = progs::build(Prog::VsockEcho).unwrap_or_else(|e| panic!("vsock_echo: {e}"));
    let mut tree = guest_initramfs(&art.busybox, Some(INIT)).unwrap();
    tree.file("/vsock_echo", 0o755, echo.as_path());
    let wanted = [
        &VIRTIO_PCI_MODULE_NAMES[..],
        &[
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ],
    ]
    .concat();
    add_modules(&mut tree, &art.virtio_modules, &wanted).unwrap();
    let initrd = tree.to_bytes().unwrap();
    let result = Batch::new(env!("CARGO_BIN_EXE_kiln"))
        .run(
            RunSpec::new("vsock", ["-c", HOST])
                .program("/bin/sh")
                .file("vsock_echo", echo.as_path())
                .file("bzimage", art.bzimage.as_path())
                .file("initrd", initrd)
                .timeout_secs(300),
        )
        // A 2-vCPU guest: the rig's triple fault reruns the batch once.
        .execute_rerunning_rig_triple_faults(&host, &[])
        .unwrap_or_else(|e| panic!("rig batch failed: {e}"));
    let r = result.run("vsock");
    let out = r.stdout_text();
    eprintln!("vsock: status {:?} in {:.1} s", r.status, r.seconds);
    eprintln!("--- stdout\n{out}\n--- stderr\n{}", r.stderr_text());
    assert_eq!(r.status, Some(0), "poweroff ends Kiln with 0");
    assert!(!out.contains("insmod-failed"), "{out}");
    // virtio device 0x0013 (19) bound to the kernel's virtio vsock transport.
    let dev = line_with(&out, r, "virtio-device=0x0013");
    assert!(dev.ends_with("driver=vmw_vsock_virtio_transport"), "{dev}");
    // Negotiated (one '0'/'1' per bit, bit 0 first): VERSION_1 (32) and EVENT_IDX (29);
    // stream sockets only (no SEQPACKET, bit 1).
    let features = dev
        .split_whitespace()
        .find_map(|w| w.strip_prefix("features="))
        .unwrap_or_else(|| panic!("no features in {dev}"))
        .as_bytes();
    assert_eq!(features.len(), 64, "{dev}");
    assert_eq!(
        (features[32], features[29], features[1]),
        (b'1', b'1', b'0'),
        "{dev}"
    );
    assert_eq!(line_with(&out, r, "vsock-cid ").trim(), "vsock-cid 7");
    // Guest -> host: the guest's connect and the host's echo server.
    let guest_connect = line_with(&out, r, "vsock-ok connect");
    assert_eq!(guest_connect.trim(), "vsock-ok connect bytes=1048576");
    assert!(
        line_with(&out, r, "host-listen:").contains("vsock-ok uds-listen connections=1"),
        "{out}"
    );
    // Host -> guest: CONNECT, OK, 1 MiB echoed by the guest's listener.
    assert_eq!(
        line_with(&out, r, "host-connect:").trim(),
        "host-connect: vsock-ok uds-connect bytes=1048576"
    );
    assert!(
        out.contains("vsock-ok listen connections=1"),
        "the guest's listener served the host: {out}"
    );
    // Nobody listens on 4321 in the guest: Kiln closes the host socket without OK.
    assert!(
        line_with(&out, r, "refused:").contains("vsock-fail uds-connect: no answer to CONNECT"),
        "{out}"
    );
    assert!(
        r.stderr_text().contains("virtio-vsock"),
        "--trace-exits prints the device counters:\n{}",
        r.stderr_text()
    );
}
