//! Guest and L1 artifacts from Debian packages, downloaded and extracted without
//! installing anything (`apt-get download`, then `dpkg-deb -x`, or for kernels only the
//! files used through `dpkg-deb --fsys-tarfile | tar -x`) and cached under
//! `target/kiln-artifacts/<kind>/`.
//!
//! Each kind's directory is built in a temporary directory and renamed into place, and
//! ends with a `stamp` file naming the package versions; a directory with a stamp is
//! reused as is (no network, no apt), so the cache is refreshed only when it is missing.
//! Delete `target/kiln-artifacts` to fetch the current packages again.
//!
//! - [`Artifacts::get`]: linux-image-cloud-amd64 (bzImage, ELF vmlinux, kvm modules) and
//!   busybox-static.
//! - [`generic_kernel`]: the linux-image-amd64 bzImage (has X86_MPPARSE; boots without
//!   ACPI).
//! - [`busybox`]: just the static busybox.

use crate::{artifacts_dir, bzimage, err, run_tool, Context, Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The modules L1 loads, in load order, as paths under the kernel's module tree: KVM,
/// and tun for the TAP devices virtio-net tests give Kiln.
pub const KVM_MODULES: [&str; 4] = [
    "virt/lib/irqbypass",
    "arch/x86/kvm/kvm",
    "arch/x86/kvm/kvm-amd",
    "drivers/net/tun",
];

/// Modules for L2 guests (the cloud kernel has no built-in pvpanic driver for the ACPI
/// QEMU0001 device), as paths under the kernel's module tree.
pub const GUEST_MODULES: [&str; 2] = [
    "drivers/misc/pvpanic/pvpanic",
    "drivers/misc/pvpanic/pvpanic-mmio",
];

/// The cloud kernel's virtio modules, in load order (each needs the ones before it):
/// the PCI transport, then the block, console, rng, network and vsock drivers.
pub const VIRTIO_MODULES: [&str; 14] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "drivers/char/virtio_console",
    "drivers/char/hw_random/virtio-rng",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "net/vmw_vsock/vsock",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common",
    "net/vmw_vsock/vmw_vsock_virtio_transport",
];

/// The names of the virtio core and PCI transport modules every virtio guest loads
/// first (the first five of [`VIRTIO_MODULES`]), for
/// [`add_modules`](crate::initramfs::add_modules).
pub const VIRTIO_PCI_MODULE_NAMES: [&str; 5] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
];

/// The cloud kernel's IDE, disk, CD-ROM and ISO 9660 modules, in load order: what a
/// BIOS-booted installer loads to see its IDE disk (sda) and CD (sr0).
pub const ATA_MODULES: [&str; 8] = [
    "drivers/scsi/scsi_common",
    "drivers/scsi/scsi_mod",
    "drivers/ata/libata",
    "drivers/ata/ata_piix",
    "drivers/scsi/sd_mod",
    "drivers/cdrom/cdrom",
    "drivers/scsi/sr_mod",
    "fs/isofs/isofs",
];

/// How many of [`VIRTIO_MODULES`] a guest with only virtio-blk disks needs.
pub const VIRTIO_BLK_MODULES: usize = 6;

/// The cloud kernel with its KVM modules, and busybox: everything the rig boots as L1,
/// and the pieces of an L2 guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// The kernel as packaged (`boot/vmlinuz-*`), a bzImage.
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel cut out of the bzImage.
    pub vmlinux: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The real kernel package and its version, e.g. (`linux-image-6.1.0-56-cloud-amd64`,
    /// `6.1.192-2`).
    pub kernel_package: (String, String),
    /// irqbypass.ko, kvm.ko, kvm-amd.ko, tun.ko (uncompressed), in load order.
    pub modules: Vec<PathBuf>,
    /// Modules guests load ([`GUEST_MODULES`], uncompressed), in order.
    pub guest_modules: Vec<PathBuf>,
    /// The virtio modules ([`VIRTIO_MODULES`], uncompressed), in load order.
    pub virtio_modules: Vec<PathBuf>,
    /// The IDE/CD modules ([`ATA_MODULES`], uncompressed), in load order.
    pub ata_modules: Vec<PathBuf>,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

impl Artifacts {
    /// The cloud kernel artifacts and busybox, downloading them on first use.
    pub fn get() -> Result<Artifacts> {
        let (dir, stamp) = cached("linux-cloud-v6", |tmp| {
            fetch_kernel("linux-image-cloud-amd64", tmp, true)
        })?;
        let modules = KVM_MODULES
            .iter()
            .map(|m| dir.join(format!("{}.ko", module_name(m))))
            .collect();
        let in_dir = |list: &[&str]| -> Vec<PathBuf> {
            list.iter()
                .map(|m| dir.join(format!("{}.ko", module_name(m))))
                .collect()
        };
        Ok(Artifacts {
            guest_modules: in_dir(&GUEST_MODULES),
            virtio_modules: in_dir(&VIRTIO_MODULES),
            ata_modules: in_dir(&ATA_MODULES),
            bzimage: dir.join("vmlinuz"),
            vmlinux: dir.join("vmlinux"),
            kernel_version: stamp.get("kernel_version")?,
            kernel_package: (stamp.get("package")?, stamp.get("version")?),
            modules,
            busybox: busybox()?,
        })
    }
}

/// The generic (non-cloud) Debian kernel: a bzImage with X86_MPPARSE, for guests booted
/// without ACPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericKernel {
    /// The bzImage (`boot/vmlinuz-*` of linux-image-amd64's kernel package).
    pub bzimage: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// The real kernel package and its version.
    pub kernel_package: (String, String),
}

/// The linux-image-amd64 kernel, downloading it on first use.
pub fn generic_kernel() -> Result<GenericKernel> {
    let (dir, stamp) = cached("linux-generic", |tmp| {
        fetch_kernel("linux-image-amd64", tmp, false)
    })?;
    Ok(GenericKernel {
        bzimage: dir.join("vmlinuz"),
        kernel_version: stamp.get("kernel_version")?,
        kernel_package: (stamp.get("package")?, stamp.get("version")?),
    })
}

/// busybox-static's `bin/busybox`, downloading it on first use.
pub fn busybox() -> Result<PathBuf> {
    let (dir, _) = cached("busybox", |tmp| {
        let (deb, version) = download("busybox-static", tmp)?;
        let root = extract(&deb, tmp, &[])?;
        move_file(&root.join("bin/busybox"), &tmp.join("busybox"))?;
        remove_dir(&root)?;
        Ok(Stamp(vec![
            ("package".into(), "busybox-static".into()),
            ("version".into(), version),
        ]))
    })?;
    Ok(dir.join("busybox"))
}

/// The boot loaders of a BIOS install: isolinux for the CD, extlinux for the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslinux {
    /// isolinux.bin (El Torito no-emulation boot image), from `isolinux`.
    pub isolinux_bin: PathBuf,
    /// ldlinux.c32 (isolinux's second stage), from `syslinux-common`.
    pub ldlinux_c32: PathBuf,
    /// The 440-byte MBR boot code that chain-loads the active partition, from
    /// `syslinux-common`.
    pub mbr_bin: PathBuf,
    /// The `extlinux` installer (dynamically linked), from `extlinux`.
    pub extlinux: PathBuf,
}

/// isolinux, syslinux-common and extlinux's files, downloading them on first use.
pub fn syslinux() -> Result<Syslinux> {
    let (dir, _) = cached("syslinux", |tmp| {
        let mut stamp = Vec::new();
        let files = [
            ("isolinux", "usr/lib/ISOLINUX/isolinux.bin", "isolinux.bin"),
            (
                "syslinux-common",
                "usr/lib/syslinux/modules/bios/ldlinux.c32",
                "ldlinux.c32",
            ),
            ("syslinux-common", "usr/lib/syslinux/mbr/mbr.bin", "mbr.bin"),
            ("extlinux", "usr/bin/extlinux", "extlinux"),
        ];
        for package in ["isolinux", "syslinux-common", "extlinux"] {
            let (deb, version) = download(package, tmp)?;
            let root = extract(&deb, tmp, &[])?;
            for (_, from, to) in files.iter().filter(|f| f.0 == package) {
                move_file(&root.join(from), &tmp.join(to))?;
            }
            remove_dir(&root)?;
            let _ = std::fs::remove_file(&deb);
            stamp.push((package.to_string(), version));
        }
        // The .debs themselves are not needed (apt may name them differently).
        for e in std::fs::read_dir(tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let p = e.ctx(|| format!("listing {}", tmp.display()))?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(Stamp(stamp))
    })?;
    Ok(Syslinux {
        isolinux_bin: dir.join("isolinux.bin"),
        ldlinux_c32: dir.join("ldlinux.c32"),
        mbr_bin: dir.join("mbr.bin"),
        extlinux: dir.join("extlinux"),
    })
}

/// `key=value` lines saying what a cache directory holds.
struct Stamp(Vec<(String, String)>);

impl Stamp {
    fn get(&self, key: &str) -> Result<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                err!(
                    "artifact stamp has no {key}; delete {}",
                    artifacts_dir().display()
                )
            })
    }
}

/// Serializes downloads within this process (tests run in parallel threads).
static FETCH: Mutex<()> = Mutex::new(());

/// The cache directory for `kind`, building it with `build` (into a temporary directory)
/// when it has no stamp yet.
fn cached(kind: &str, build: impl FnOnce(&Path) -> Result<Stamp>) -> Result<(PathBuf, Stamp)> {
    let dir = artifacts_dir().join(kind);
    let stamp_path = dir.join("stamp");
    if let Ok(text) = std::fs::read_to_string(&stamp_path) {
        return Ok((dir, parse_stamp(&text)));
    }
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(text) = std::fs::read_to_string(&stamp_path) {
        return Ok((dir, parse_stamp(&text))); // fetched while we waited
    }
    let started = Instant::now();
    let tmp = artifacts_dir().join(format!(".tmp-{kind}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let built = build(&tmp).and_then(|stamp| {
        let text: String = stamp.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(tmp.join("stamp"), &text)
            .ctx(|| format!("writing the stamp in {}", tmp.display()))?;
        if dir.exists() && !stamp_path.exists() {
            remove_dir(&dir)?; // left over without a stamp: incomplete
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(stamp),
            // Another process finished first: use its copy.
            Err(_) if stamp_path.exists() => {
                remove_dir(&tmp)?;
                Ok(parse_stamp(
                    &std::fs::read_to_string(&stamp_path).unwrap_or_default(),
                ))
            }
            Err(e) => Err(err!("renaming {} to {}: {e}", tmp.display(), dir.display())),
        }
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let stamp = built.map_err(|e| err!("fetching the {kind} artifacts: {e}"))?;
    eprintln!(
        "kiln-testrig: fetched {kind} artifacts into {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok((dir, stamp))
}

fn parse_stamp(text: &str) -> Stamp {
    Stamp(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Download the kernel package behind metapackage `meta`, extract it into `into`:
/// `vmlinuz`, and with `kvm` also `vmlinux` and the KVM modules.
fn fetch_kernel(meta: &str, into: &Path, kvm: bool) -> Result<Stamp> {
    let package = apt_retry(|| resolve_metapackage(meta))?;
    let (deb, version) = download(&package, into)?;
    // Only the files used: the generic kernel package unpacks to 400 MB.
    let mut wanted = vec!["./boot/vmlinuz-*".to_string()];
    if kvm {
        wanted.extend(
            KVM_MODULES
                .iter()
                .chain(GUEST_MODULES.iter())
                .chain(VIRTIO_MODULES.iter())
                .chain(ATA_MODULES.iter())
                .map(|m| format!("*/modules/*/kernel/{m}.ko*")),
        );
    }
    let root = extract(&deb, into, &wanted)?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ctx(|| format!("{package} has no boot/ directory"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| err!("{package} has no boot/vmlinuz-*"))?;
    let kernel_version = vmlinuz["vmlinuz-".len()..].to_string();
    move_file(&boot.join(&vmlinuz), &into.join("vmlinuz"))?;
    if kvm {
        bzimage::extract_vmlinux(&into.join("vmlinuz"), &into.join("vmlinux"))?;
        let tree = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&kernel_version).join("kernel"))
            .find(|d| d.is_dir())
            .ok_or_else(|| err!("{package} has no lib/modules/{kernel_version}/kernel"))?;
        for m in KVM_MODULES
            .iter()
            .chain(GUEST_MODULES.iter())
            .chain(VIRTIO_MODULES.iter())
            .chain(ATA_MODULES.iter())
        {
            install_module(&tree, m, &into.join(format!("{}.ko", module_name(m))))?;
        }
    }
    remove_dir(&root)?;
    Ok(Stamp(vec![
        ("metapackage".into(), meta.into()),
        ("package".into(), package),
        ("version".into(), version),
        ("kernel_version".into(), kernel_version),
    ]))
}

/// `arch/x86/kvm/kvm-amd` -> `kvm-amd`.
fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Copy module `rel` (under `tree`) to `to`, uncompressed, whichever of .ko, .ko.xz,
/// .ko.zst or .ko.gz the package ships.
fn install_module(tree: &Path, rel: &str, to: &Path) -> Result<()> {
    let plain = tree.join(format!("{rel}.ko"));
    if plain.exists() {
        return move_file(&plain, to);
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd"), ("gz", "gzip")] {
        let packed = tree.join(format!("{rel}.ko.{ext}"));
        if packed.exists() {
            let out = run_tool(Command::new(tool).args(["-d", "-c"]).arg(&packed))
                .map_err(|e| err!("decompressing module {}: {e}", packed.display()))?;
            return std::fs::write(to, out.stdout).ctx(|| format!("writing {}", to.display()));
        }
    }
    Err(err!(
        "module {rel}.ko(.xz/.zst/.gz) not found under {}",
        tree.display()
    ))
}

/// The kernel package a metapackage such as linux-image-cloud-amd64 depends on.
fn resolve_metapackage(meta: &str) -> Result<String> {
    let out = run_tool(Command::new("apt-cache").args(["depends", meta]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| err!("`apt-cache depends {meta}` names no linux-image-* package:\n{text}"))
}

/// `apt-get download package` into `dir`: the .deb's path and the package version.
fn download(package: &str, dir: &Path) -> Result<(PathBuf, String)> {
    let deb = apt_retry(|| {
        run_tool(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                .current_dir(dir),
        )?;
        let prefix = format!("{package}_");
        std::fs::read_dir(dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .ok_or_else(|| {
                err!(
                    "apt-get download {package} left no .deb in {}",
                    dir.display()
                )
            })
    })
    .map_err(|e| err!("downloading Debian package {package}: {e}"))?;
    let out = run_tool(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((deb, version))
}

/// Extract `deb` into `into/root` without installing it: everything (`dpkg-deb -x`), or
/// only the members matching the tar `patterns` (`dpkg-deb --fsys-tarfile | tar -x
/// --wildcards`). Then delete the .deb.
fn extract(deb: &Path, into: &Path, patterns: &[String]) -> Result<PathBuf> {
    let root = into.join("root");
    let what = || format!("extracting {}", deb.display());
    if patterns.is_empty() {
        run_tool(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))
            .map_err(|e| err!("{}: {e}", what()))?;
    } else {
        std::fs::create_dir_all(&root).ctx(|| format!("creating {}", root.display()))?;
        let mut dpkg = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(deb)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("{}: running dpkg-deb", what()))?;
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&root)
            .arg("--wildcards")
            .args(patterns)
            .stdin(dpkg.stdout.take().expect("piped"))
            .output()
            .ctx(|| format!("{}: running tar", what()))?;
        let dpkg = dpkg.wait_with_output().ctx(what)?;
        if !tar.status.success() || !dpkg.status.success() {
            return Err(err!(
                "{}: dpkg-deb --fsys-tarfile ({}): {}; tar -x {patterns:?} ({}): {}",
                what(),
                dpkg.status,
                String::from_utf8_lossy(&dpkg.stderr).trim(),
                tar.status,
                String::from_utf8_lossy(&tar.stderr).trim()
            ));
        }
    }
    std::fs::remove_file(deb).ctx(|| format!("removing {}", deb.display()))?;
    Ok(root)
}

/// Set once this process has run `apt-get update`.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Run an apt query; if it fails, run `apt-get update` (once per process: the package
/// lists may be missing or stale) and try again.
fn apt_retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Ok(v) => Ok(v),
        Err(first) if !APT_UPDATED.swap(true, Ordering::SeqCst) => {
            eprintln!("kiln-testrig: {first}; running apt-get update and retrying");
            run_tool(Command::new("apt-get").args(["update", "-qq"]))
                .map_err(|e| err!("{first}; then apt-get update (needs root) failed too: {e}"))?;
            f().map_err(|e| Error(format!("{e} (also after apt-get update)")))
        }
        Err(e) => Err(e),
    }
}

fn move_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).ctx(|| format!("moving {} to {}", from.display(), to.display()))
}

fn remove_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_module_names_are_the_first_virtio_modules() {
        let stems: Vec<&str> = VIRTIO_MODULES[..5]
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(stems, VIRTIO_PCI_MODULE_NAMES);
    }
}
