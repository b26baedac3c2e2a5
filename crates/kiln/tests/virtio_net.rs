//! virtio-net on a TAP device, on a real KVM (directly, or in the rig): Kiln creates the
//! TAP, the host side gets an address and a busybox httpd, and Debian's kernel with its
//! own virtio_net module brings eth0 up, pings the host and downloads a 64 MiB file whose
//! MD5 matches the host's.

use kiln_testrig::artifacts::VIRTIO_PCI_MODULE_NAMES;
use kiln_testrig::initramfs::{add_modules, guest_initramfs};
use kiln_testrig::{Artifacts, Batch, Host, RunResult, RunSpec};

/// The guest: load virtio-net, configure eth0, ping and download.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod /m/$m.ko || echo "insmod-failed=$m"; done
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
echo "mac=$(cat /sys/class/net/eth0/address)"
echo "driver=$(basename $(readlink /sys/class/net/eth0/device/driver))"
echo "features=$(cat /sys/class/net/eth0/device/features)"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
if ping -c 3 -W 5 10.0.2.1 > /tmp/ping 2>&1; then echo ping=ok; else echo ping=failed; cat /tmp/ping; fi
echo "blob-md5=$(wget -q -O - http://10.0.2.1:8080/blob | md5sum | cut -d' ' -f1)"
echo "rx=$(cat /sys/class/net/eth0/statistics/rx_bytes) tx=$(cat /sys/class/net/eth0/statistics/tx_bytes)"
poweroff -f
"#;

/// The host side, where the run happens: a 64 MiB file, Kiln in the background, the TAP
/// configured once Kiln has created it, httpd serving the file.
const HOST: &str = r#"
dir=/tmp/kiln-net-$$
mkdir -p $dir
# Carried files are not executable: make a runnable copy of busybox.
bb=$dir/busybox
cp {file:busybox} $bb && chmod 755 $bb
dd if=/dev/urandom of=$dir/blob bs=1M count=64 2>/dev/null
echo "host-md5=$(md5sum $dir/blob | cut -d' ' -f1)"
{kiln} run --kernel {file:bzimage} --initrd {file:initrd} -m 256M --cpus 2 \
    --net tap=kt0,mac=52:54:00:12:34:56 --trace-exits \
    --cmdline "console=ttyS0 quiet panic=-1" &
k=$!
n=0; while [ ! -e /sys/class/net/kt0 ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
$bb ip addr add 10.0.2.1/24 dev kt0
$bb ip link set kt0 up
mkdir -p $dir/www && mv $dir/blob $dir/www/blob
$bb httpd -p 10.0.2.1:8080 -h $dir/www
wait $k
st=$?
pkill -f "httpd -p 10.0.2.1:8080" 2>/dev/null
rm -rf $dir
exit $st
"#;

fn field<'a>(r: &'a RunResult, out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{}: no {key}= line in:\n{out}\n{}", r.name, r.stderr_text()))
}

#[test]
fn tap_ping_and_a_64_mib_download() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM for this test: {e}"));
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    let mut tree = guest_initramfs(&art.busybox, Some(INIT)).unwrap();
    let wanted = [
        &VIRTIO_PCI_MODULE_NAMES[..],
        &["failover", "net_failover", "virtio_net"],
    ]
    .concat();
    add_modules(&mut tree, &art.virtio_modules, &wanted).unwrap();
    let initrd = tree.to_bytes().unwrap();
    let result = Batch::new(env!("CARGO_BIN_EXE_kiln"))
        .run(
            RunSpec::new("net", ["-c", HOST])
                .program("/bin/sh")
                .file("busybox", art.busybox.as_path())
                .file("bzimage", art.bzimage.as_path())
                .file("initrd", initrd)
                .timeout_secs(400),
        )
        // A 2-vCPU guest: the rig's triple fault reruns the batch once.
        .execute_rerunning_rig_triple_faults(&host, &[])
        .unwrap_or_else(|e| panic!("rig batch failed: {e}"));
    let r = result.run("net");
    let out = r.stdout_text();
    eprintln!("net: status {:?} in {:.1} s", r.status, r.seconds);
    eprintln!("--- stdout\n{out}\n--- stderr\n{}", r.stderr_text());
    assert_eq!(r.status, Some(0), "poweroff ends Kiln with 0");
    assert!(!out.contains("insmod-failed"), "{out}");
    assert_eq!(field(r, &out, "mac"), "52:54:00:12:34:56");
    assert_eq!(field(r, &out, "driver"), "virtio_net");
    // Negotiated (sysfs: one '0'/'1' per bit, bit 0 first): CSUM 0, GUEST_CSUM 1, MAC 5,
    // GUEST_TSO4/6 7/8, HOST_TSO4/6 11/12, MRG_RXBUF 15, STATUS 16, EVENT_IDX 29,
    // VERSION_1 32.
    let features = field(r, &out, "features").as_bytes();
    for bit in [0, 1, 5, 7, 8, 11, 12, 15, 16, 29, 32] {
        assert_eq!(features.get(bit), Some(&b'1'), "feature bit {bit}: {out}");
    }
    assert_eq!(field(r, &out, "ping"), "ok", "{out}");
    let host_md5 = field(r, &out, "host-md5");
    assert_eq!(host_md5.len(), 32, "{out}");
    assert_eq!(field(r, &out, "blob-md5"), host_md5, "the download differs");
    assert!(
        r.stderr_text().contains("rx_packets="),
        "--trace-exits prints the device counters:\n{}",
        r.stderr_text()
    );
}
