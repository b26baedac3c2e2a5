//! The guest of the virtio-blk tests (tests/virtio.rs, tests/rig_faults.rs): an
//! initramfs whose init loads Debian's virtio modules and exercises the disks.

use kiln_testrig::artifacts::VIRTIO_BLK_MODULES;
use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::Artifacts;

/// The initramfs init: load the virtio modules, report the devices, then either exercise
/// /dev/vda and /dev/vdb (`kiln.mode=raw`) or switch to the ext4 root on `root=`.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod /m/$m.ko || echo "insmod-failed=$m"; done
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
for d in /sys/bus/virtio/devices/*; do
    echo "virtio=$(basename $d) device=$(cat $d/device) driver=$(basename $(readlink $d/driver)) features=$(cat $d/features)"
done
mode=$(sed -n 's/.*kiln\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ "$mode" = console ]; then
    echo "hvc=$(cat /sys/class/tty/hvc0/dev)"
    # One open for both: closing the tty would flush input that already arrived.
    exec 3<>/dev/hvc0
    # No tty echo: it would interleave with this script's COM1 output on Kiln's stdout.
    stty -echo <&3
    echo "hello-from-hvc0" >&3
    read -t 60 line <&3
    echo "got=$line"
    poweroff -f
fi
if [ "$mode" = root ]; then
    root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
    mkdir -p /newroot
    mount -t ext4 "$root" /newroot || echo "mount-failed=$root"
    exec switch_root /newroot /sbin/kiln-init
fi
echo "serial=$(cat /sys/block/vda/serial)"
echo "sectors=$(cat /sys/block/vda/size)"
echo "vdb-ro=$(cat /sys/block/vdb/ro)"
echo "head-md5=$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
yes kiln-virtio-blk | head -c 4194304 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=8 conv=fsync 2>/dev/null && echo "stream-written"
i=0
while [ $i -lt 16 ]; do
    (yes "chunk-$i" | head -c 1048576 | dd of=/dev/vda bs=64k seek=$((256 + i * 16)) conv=fsync 2>/dev/null) &
    i=$((i + 1))
done
wait
echo 3 > /proc/sys/vm/drop_caches
i=0
while [ $i -lt 16 ]; do
    a=$(dd if=/dev/vda bs=64k skip=$((256 + i * 16)) count=16 2>/dev/null | md5sum | cut -d' ' -f1)
    b=$(yes "chunk-$i" | head -c 1048576 | md5sum | cut -d' ' -f1)
    [ "$a" = "$b" ] && echo "readback-$i=ok" || echo "readback-$i=BAD"
    i=$((i + 1))
done
if dd if=/tmp/p of=/dev/vdb bs=4k count=1 conv=fsync 2>/dev/null; then echo vdb-write=accepted; else echo vdb-write=refused; fi
echo "hwrng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "random=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
sync
poweroff -f
"#;

/// The initramfs: [`INIT`], busybox, the virtio-blk modules and the modules named in
/// `extra` (file names such as `virtio-rng.ko`), loaded in that order.
pub fn initramfs(art: &Artifacts, extra: &[&str]) -> Vec<u8> {
    let mut tree = guest_initramfs(&art.busybox, Some(INIT)).unwrap();
    let module = |name: &str| {
        art.virtio_modules
            .iter()
            .find(|m| m.ends_with(name))
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let mut names = Vec::new();
    for m in art.virtio_modules[..VIRTIO_BLK_MODULES]
        .iter()
        .chain(extra.iter().map(|n| module(n)))
    {
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        tree.file(&format!("/m/{name}.ko"), 0o644, m.as_path());
        names.push(name);
    }
    tree.file("/modules", 0o644, names.join(" "));
    tree.to_bytes().unwrap()
}
