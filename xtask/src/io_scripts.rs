//! The shell scripts of `cargo xtask bench io` (the guest's /init and the wrapper every run
//! goes through in L1) and the parsing of what they print.
//!
//! The guest times each phase itself (/proc/uptime, 10 ms; `io_bench` uses
//! CLOCK_MONOTONIC). Around the 4 KiB random reads it prints `KILN-MARK rand-start` and
//! `KILN-MARK rand-end` and idles for a second after each; the wrapper, watching the VMM's
//! output, then reads KVM's per-VM exit counters from L1's debugfs
//! (`/sys/kernel/debug/kvm/<pid>-<fd>/exits`, ...), so the difference is the exits the
//! reads cost, whichever VMM runs.

/// The guest: load virtio; disk runs time a 128 MiB write and read and the random reads,
/// network runs a 64 MiB download from L1 and a 64 MiB upload to it; then power off.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /modules); do insmod /m/$m.ko; done
t() { read u _ < /proc/uptime; echo $u; }
mark() { echo "KILN-MARK $1"; sleep 1; }
if grep -q kiln.net /proc/cmdline; then
    n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
    ip link set eth0 up
    ip addr add 10.0.3.15/24 dev eth0
    n=0; until ping -c 1 -W 1 10.0.3.1 > /dev/null 2>&1 || [ $n -ge 20 ]; do n=$((n+1)); done
    a=$(t); s=$(wget -q -O - http://10.0.3.1:8080/blob | wc -c); b=$(t)
    echo "KILN-NET bytes=$s get=$a:$b"
    /io_bench tcp-send 10.0.3.1 9000 67108864
    poweroff -f
fi
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
a=$(t); dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; b=$(t)
echo 3 > /proc/sys/vm/drop_caches
c=$(t); dd if=/dev/vda of=/dev/null bs=1M count=128 2>/dev/null; d=$(t)
echo "KILN-IO write=$a:$b read=$c:$d"
mark rand-start
/io_bench randread /dev/vda RAND_READS
mark rand-end
poweroff -f
"#;

/// 4 KiB random reads per disk run.
pub const RAND_READS: u32 = 2000;
/// Bytes each network run downloads and uploads.
pub const NET_BYTES: u64 = 64 << 20;

/// The guest's /init with the constants filled in.
pub fn init() -> String {
    INIT.replace("RAND_READS", &RAND_READS.to_string())
}

/// The wrapper each run goes through in L1: `sh -c HOST sh disk|net VMM ARGS...`. It
/// mounts debugfs, starts the VMM with its output in files, for network runs configures
/// the TAP (`kb0`, created by the VMM), serves 64 MiB with busybox httpd and receives the
/// guest's upload with `io_bench tcp-recv`; it snapshots KVM's exit counters at the
/// guest's marks, then prints the VMM's output and exits with its status.
pub const HOST: &str = r#"
mode=$1; shift
dir=/tmp/kiln-bench-$$
mkdir -p $dir/www
iob=$dir/io_bench
cp {file:io_bench} $iob && chmod 755 $iob
bb=$dir/busybox
cp {file:busybox} $bb && chmod 755 $bb
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
snap() {
    line="KILN-EXITS $1"
    for f in exits io_exits mmio_exits halt_exits irq_injections; do
        v=$(cat /sys/kernel/debug/kvm/*-*/$f 2>/dev/null | head -n 1)
        line="$line $f=${v:-na}"
    done
    echo "$line"
}
h=; r=
if [ "$mode" = net ]; then
    dd if=/dev/zero of=$dir/www/blob bs=1M count=64 2>/dev/null
    $iob tcp-recv 9000 > $dir/recv &
    r=$!
fi
"$@" > $dir/out 2> $dir/err &
k=$!
if [ "$mode" = net ]; then
    n=0; while [ ! -e /sys/class/net/kb0 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
    $bb ip addr add 10.0.3.1/24 dev kb0
    $bb ip link set kb0 up
    $bb httpd -f -p 10.0.3.1:8080 -h $dir/www &
    h=$!
fi
for m in rand-start rand-end; do
    while kill -0 $k 2>/dev/null && ! grep -q "KILN-MARK $m" $dir/out; do sleep 0.05; done
    kill -0 $k 2>/dev/null && snap $m
done
wait $k
st=$?
[ -n "$h" ] && kill $h
[ -n "$r" ] && kill $r 2>/dev/null
cat $dir/out
cat $dir/err >&2
[ -f $dir/recv ] && cat $dir/recv
rm -rf $dir
exit $st
"#;

/// Seconds for a `KEY=a:b` span on the line starting with `tag`.
fn span(out: &str, tag: &str, key: &str) -> Option<f64> {
    let v = field(out, tag, key)?;
    let (a, b) = v.split_once(':')?;
    Some(b.parse::<f64>().ok()? - a.parse::<f64>().ok()?)
}

/// The value of `key=` on the line starting with `tag`.
fn field<'a>(out: &'a str, tag: &str, key: &str) -> Option<&'a str> {
    let line = out.lines().find_map(|l| l.trim().strip_prefix(tag))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// What one disk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskRun {
    /// Seconds for the 128 MiB write.
    pub write: f64,
    /// Seconds for the 128 MiB cold read.
    pub read: f64,
    /// 4 KiB random reads per second, when the guest reported them.
    pub rand_iops: Option<f64>,
    /// KVM exits per random read, when L1's debugfs had the counters.
    pub exits_per_read: Option<f64>,
    /// Exits to the VMM for port or MMIO accesses per random read.
    pub user_exits_per_read: Option<f64>,
}

/// Parse a disk run's output.
pub fn parse_disk(out: &str) -> Option<DiskRun> {
    let rand_iops = (|| {
        let reads: f64 = field(out, "KILN-RAND ", "reads=")?.parse().ok()?;
        let secs: f64 = field(out, "KILN-RAND ", "seconds=")?.parse().ok()?;
        (reads as u32 == RAND_READS && secs > 0.0).then_some(reads / secs)
    })();
    let delta = |key: &str| -> Option<f64> {
        let a: f64 = field(out, "KILN-EXITS rand-start ", key)?.parse().ok()?;
        let b: f64 = field(out, "KILN-EXITS rand-end ", key)?.parse().ok()?;
        Some((b - a) / f64::from(RAND_READS))
    };
    let user = delta("io_exits=")
        .zip(delta("mmio_exits="))
        .map(|(i, m)| i + m);
    Some(DiskRun {
        write: span(out, "KILN-IO ", "write=")?,
        read: span(out, "KILN-IO ", "read=")?,
        rand_iops,
        exits_per_read: delta("exits="),
        user_exits_per_read: user,
    })
}

/// What one network run measured: seconds for the download, and for the upload when L1
/// received every byte.
pub fn parse_net(out: &str) -> Option<(f64, Option<f64>)> {
    let bytes: u64 = field(out, "KILN-NET ", "bytes=")?.parse().ok()?;
    let get = (bytes == NET_BYTES).then(|| span(out, "KILN-NET ", "get="))??;
    let put = (|| {
        let recv: u64 = field(out, "KILN-TCP-RECV ", "bytes=")?.parse().ok()?;
        let sent: u64 = field(out, "KILN-TCP ", "bytes=")?.parse().ok()?;
        let secs: f64 = field(out, "KILN-TCP ", "seconds=")?.parse().ok()?;
        (recv == NET_BYTES && sent == NET_BYTES).then_some(secs)
    })();
    Some((get, put))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_disk_run() {
        let out = format!(
            "noise\nKILN-IO write=5.10:7.35 read=7.40:8.00\r\nKILN-MARK rand-start\n\
             KILN-EXITS rand-start exits=1000 io_exits=10 mmio_exits=5 halt_exits=1\n\
             KILN-RAND reads={RAND_READS} seconds=0.5\n\
             KILN-EXITS rand-end exits=9000 io_exits=10 mmio_exits=2005 halt_exits=9\n"
        );
        let r = parse_disk(&out).unwrap();
        assert!((r.write - 2.25).abs() < 1e-9 && (r.read - 0.6).abs() < 1e-9);
        assert_eq!(r.rand_iops, Some(f64::from(RAND_READS) * 2.0));
        assert_eq!(r.exits_per_read, Some(8000.0 / f64::from(RAND_READS)));
        assert_eq!(r.user_exits_per_read, Some(1.0));
        assert!(parse_disk("KILN-IO write=1").is_none());
        let bare = parse_disk("KILN-IO write=1:2 read=2:3").unwrap();
        assert_eq!((bare.rand_iops, bare.exits_per_read), (None, None));
        let no_debugfs = "KILN-IO write=1:2 read=2:3\nKILN-EXITS rand-start exits=na\n\
                          KILN-EXITS rand-end exits=na\n";
        assert_eq!(parse_disk(no_debugfs).unwrap().exits_per_read, None);
    }

    #[test]
    fn parses_a_network_run() {
        let n = NET_BYTES;
        let out = format!(
            "KILN-NET bytes={n} get=10.00:14.50\nKILN-TCP bytes={n} seconds=3.25\n\
             KILN-TCP-RECV bytes={n}\n"
        );
        assert_eq!(parse_net(&out), Some((4.5, Some(3.25))));
        let short = format!(
            "KILN-NET bytes={n} get=1:2\nKILN-TCP bytes={n} seconds=3\nKILN-TCP-RECV bytes=5\n"
        );
        assert_eq!(parse_net(&short), Some((1.0, None)), "short upload");
        assert_eq!(
            parse_net("KILN-NET bytes=5 get=1:2"),
            None,
            "short download"
        );
    }

    #[test]
    fn init_reads_the_configured_count() {
        assert!(init().contains(&format!("randread /dev/vda {RAND_READS}\n")));
    }
}
