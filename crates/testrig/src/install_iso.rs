//! The BIOS install test's CD: an isolinux ISO built from Debian packages that installs a
//! small Linux system onto the first IDE disk, the way an operating system's installer
//! CD does.
//!
//! - The CD boots through the BIOS (El Torito, no emulation) into isolinux, which prints
//!   its banner and `boot:` prompt on the serial port and loads the cloud kernel with the
//!   installer initramfs.
//! - The installer's init loads the IDE and CD modules, mounts the CD (`/dev/sr0`),
//!   writes syslinux's MBR and one active partition to `/dev/sda`, makes an ext4 file
//!   system with Debian's `mke2fs`, copies a busybox root, the kernel and the installed
//!   system's initramfs from the CD onto it, installs `extlinux` as its boot loader and
//!   powers off, printing `KILN-INSTALLER: done`.
//! - Booted from the disk (SeaBIOS -> MBR -> extlinux -> kernel), the installed system's
//!   initramfs mounts `/dev/sda1` (or `/dev/vda1` when the disk is on virtio-blk) and
//!   switches to it; its `/sbin/init` prints
//!   [`INSTALLED_MARKER`] and powers off.
//!
//! `mke2fs` and `extlinux` are dynamically linked: the installer carries the libraries
//! `ldd` lists for them. The ISO is cached under `target/kiln-artifacts/install-iso/`,
//! named by a digest of everything in it.

use crate::artifacts::{syslinux, Artifacts, VIRTIO_PCI_MODULE_NAMES};
use crate::initramfs::{add_modules, Initramfs};
use crate::{artifacts_dir, digest_hex, err, run_tool, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the installed system prints when its userspace runs from the disk.
pub const INSTALLED_MARKER: &str = "KILN-INSTALLED-SYSTEM: userspace up";
/// What the installer prints when the disk is ready.
pub const INSTALLER_DONE: &str = "KILN-INSTALLER: done";
/// What isolinux says before its prompt.
pub const ISOLINUX_SAY: &str = "KILN-ISOLINUX: the Kiln test installer";
/// What extlinux says before it loads the installed kernel.
pub const EXTLINUX_SAY: &str = "KILN-EXTLINUX: booting the installed system";

const ISOLINUX_CFG: &str = "SERIAL 0 115200
SAY KILN-ISOLINUX: the Kiln test installer
PROMPT 1
TIMEOUT 1
DEFAULT install
LABEL install
  KERNEL /boot/vmlinuz
  INITRD /boot/install.img
  APPEND console=ttyS0 panic=-1
";

const EXTLINUX_CONF: &str = "SERIAL 0 115200
SAY KILN-EXTLINUX: booting the installed system
PROMPT 0
TIMEOUT 1
DEFAULT linux
LABEL linux
  KERNEL /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND console=ttyS0 panic=-1 root=/dev/sda1
";

/// Shell functions both initramfs inits use.
const PRELUDE: &str = r#"#!/bin/sh
export PATH=/sbin:/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /modules); do insmod /m/$m.ko || echo "KILN: insmod $m failed"; done
wait_for() { i=0; while [ ! -b "$1" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ -b "$1" ]; }
"#;

const INSTALLER_INIT: &str = r#"echo "KILN-INSTALLER: started"
fail() { echo "KILN-INSTALLER: FAILED: $*"; poweroff -f; }
le32() {
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"
}
wait_for /dev/sda || fail "no disk /dev/sda"
wait_for /dev/sr0 || fail "no CD /dev/sr0"
mkdir -p /cdrom /mnt
mount -t iso9660 -o ro /dev/sr0 /cdrom || fail "cannot mount the CD"
echo "KILN-INSTALLER: CD $(cat /cdrom/install/id)"
sectors=$(cat /sys/block/sda/size)
echo "KILN-INSTALLER: disk of $sectors sectors"
dd if=/cdrom/install/mbr.bin of=/dev/sda bs=440 count=1 conv=notrunc 2>/dev/null || fail "writing the MBR"
# One active Linux partition from sector 2048 to the end (CHS fields unused).
{ printf '\200\376\377\377\203\376\377\377'; le32 2048; le32 $((sectors - 2048)); } \
    | dd of=/dev/sda bs=1 seek=446 conv=notrunc 2>/dev/null || fail "writing the partition table"
printf '\125\252' | dd of=/dev/sda bs=1 seek=510 conv=notrunc 2>/dev/null
blockdev --rereadpt /dev/sda
wait_for /dev/sda1 || fail "no /dev/sda1 after partitioning"
# extlinux 6.04 cannot boot from ext4's 64bit or metadata_csum file systems.
# Lazy inode tables and journal, a 4 MiB journal: the installer writes a few MiB, not
# the 64 MiB journal a 4 GiB file system gets by default.
/opt/kiln/mke2fs -q -F -t ext4 -O ^64bit,^metadata_csum -J size=4 \
    -E lazy_itable_init=1,lazy_journal_init=1 -L kilnroot /dev/sda1 || fail "mke2fs"
mount -t ext4 /dev/sda1 /mnt || fail "cannot mount the new file system"
mkdir -p /mnt/bin /mnt/sbin /mnt/proc /mnt/sys /mnt/dev /mnt/tmp /mnt/boot/extlinux
cp /bin/busybox /mnt/bin/busybox
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox /mnt/bin/$a; done
cp /cdrom/install/init /mnt/sbin/init && chmod 755 /mnt/sbin/init
cp /cdrom/boot/vmlinuz /mnt/boot/vmlinuz || fail "copying the kernel"
cp /cdrom/install/initrd.img /mnt/boot/initrd.img || fail "copying the initramfs"
cp /cdrom/install/extlinux.conf /mnt/boot/extlinux/extlinux.conf
/opt/kiln/extlinux --install /mnt/boot/extlinux || fail "extlinux --install"
sync
umount /mnt || fail "unmounting the new file system"
umount /cdrom
echo "KILN-INSTALLER: done"
poweroff -f
"#;

const DISK_INITRD_INIT: &str = r#"# The installed disk is sda on IDE, or vda when a VMM attaches it as virtio-blk.
i=0; while [ ! -b /dev/sda1 ] && [ ! -b /dev/vda1 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
root=/dev/sda1; [ -b $root ] || root=/dev/vda1
[ -b $root ] || { echo "KILN-DISK-INITRD: no /dev/sda1 or /dev/vda1"; poweroff -f; }
mkdir -p /newroot
mount -t ext4 $root /newroot || { echo "KILN-DISK-INITRD: cannot mount $root"; poweroff -f; }
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
"#;

const INSTALLED_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "KILN-INSTALLED-SYSTEM: userspace up; root: $(grep ' / ' /proc/mounts | tail -1)"
mount -o remount,ro /
poweroff -f
"#;

/// The modules both initramfs images load first, in order: pvpanic and the IDE disk.
const DISK_BASE_MODULES: [&str; 7] = [
    "pvpanic",
    "pvpanic-mmio",
    "scsi_common",
    "scsi_mod",
    "libata",
    "ata_piix",
    "sd_mod",
];
/// The installer's extra modules: the CD and its file system.
const INSTALLER_EXTRA_MODULES: [&str; 3] = ["cdrom", "sr_mod", "isofs"];

/// Add host program `path` at `dest` with the libraries `ldd` lists, at their paths.
fn add_dynamic(tree: &mut Initramfs, path: &Path, dest: &str) -> Result<()> {
    tree.file(dest, 0o755, path);
    let out = run_tool(Command::new("ldd").arg(path))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line.trim(),
        };
        let lib = lib.split(" (").next().unwrap_or("").trim();
        if lib.starts_with('/') && !tree.contains(lib) {
            tree.file(lib, 0o755, PathBuf::from(lib));
        }
    }
    Ok(())
}

/// Serializes builds within this process (tests run in parallel threads); separate
/// processes use separate scratch names and the same atomic rename.
static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Build (or reuse) the installer ISO for the cloud kernel in `art`.
pub fn installer_iso(art: &Artifacts) -> Result<PathBuf> {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let sys = syslinux()?;
    let modules: Vec<PathBuf> = art
        .ata_modules
        .iter()
        .chain(art.guest_modules.iter())
        .chain(art.virtio_modules.iter())
        .cloned()
        .collect();

    let mut installer = crate::initramfs::guest_initramfs(
        &art.busybox,
        Some(&format!("{PRELUDE}{INSTALLER_INIT}")),
    )?;
    add_modules(
        &mut installer,
        &modules,
        &[&DISK_BASE_MODULES[..], &INSTALLER_EXTRA_MODULES].concat(),
    )?;
    let mke2fs = which("mke2fs")?;
    // Not on PATH: busybox's shell runs its own mke2fs applet for a bare `mke2fs`.
    add_dynamic(&mut installer, &mke2fs, "/opt/kiln/mke2fs")?;
    add_dynamic(&mut installer, &sys.extlinux, "/opt/kiln/extlinux")?;
    if Path::new("/etc/mke2fs.conf").exists() {
        installer.file("/etc/mke2fs.conf", 0o644, PathBuf::from("/etc/mke2fs.conf"));
    }
    let installer = installer.to_bytes()?;

    let mut disk_initrd = crate::initramfs::guest_initramfs(
        &art.busybox,
        Some(&format!("{PRELUDE}{DISK_INITRD_INIT}")),
    )?;
    add_modules(
        &mut disk_initrd,
        &modules,
        // Also virtio-blk, for a VMM that attaches the installed disk there.
        &[
            &DISK_BASE_MODULES[..],
            &VIRTIO_PCI_MODULE_NAMES,
            &["virtio_blk"],
        ]
        .concat(),
    )?;
    let disk_initrd = disk_initrd.to_bytes()?;

    let read = |p: &Path| std::fs::read(p).ctx(|| format!("reading {}", p.display()));
    let kernel = read(&art.bzimage)?;
    let mut all = Vec::new();
    for part in [
        &kernel[..],
        &installer,
        &disk_initrd,
        ISOLINUX_CFG.as_bytes(),
        EXTLINUX_CONF.as_bytes(),
        INSTALLED_INIT.as_bytes(),
        &read(&sys.isolinux_bin)?,
        &read(&sys.ldlinux_c32)?,
        &read(&sys.mbr_bin)?,
    ] {
        all.extend_from_slice(&digest_hex("sha256sum", part).into_bytes());
    }
    let id = digest_hex("sha256sum", &all)[..16].to_string();
    let dir = artifacts_dir().join("install-iso");
    let iso = dir.join(format!("installer-{id}.iso"));
    if iso.exists() {
        return Ok(iso);
    }

    let tree = dir.join(format!(".tree-{id}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let put = |rel: &str, data: &[u8]| -> Result<()> {
        let p = tree.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, data).ctx(|| format!("writing {}", p.display()))
    };
    put("isolinux/isolinux.bin", &read(&sys.isolinux_bin)?)?;
    put("isolinux/ldlinux.c32", &read(&sys.ldlinux_c32)?)?;
    put("isolinux/isolinux.cfg", ISOLINUX_CFG.as_bytes())?;
    put("boot/vmlinuz", &kernel)?;
    put("boot/install.img", &installer)?;
    put("install/initrd.img", &disk_initrd)?;
    put("install/init", INSTALLED_INIT.as_bytes())?;
    put("install/extlinux.conf", EXTLINUX_CONF.as_bytes())?;
    put("install/mbr.bin", &read(&sys.mbr_bin)?)?;
    put("install/id", format!("kiln-installer-{id}\n").as_bytes())?;
    let tmp = dir.join(format!(".installer-{id}-{}.iso", std::process::id()));
    let built = run_tool(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "KILN_INSTALL"])
            .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .arg("-o")
            .arg(&tmp)
            .arg(&tree),
    )
    .map_err(|e| err!("building the installer ISO (xorriso comes from scripts/setup.sh): {e}"))
    .and_then(|_| std::fs::rename(&tmp, &iso).ctx(|| format!("renaming to {}", iso.display())));
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&tmp);
    built?;
    Ok(iso)
}

/// The path of a host program, from the usual system directories.
fn which(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| err!("{name} is not installed (scripts/setup.sh installs e2fsprogs)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn modules_lists_are_known_modules() {
        use crate::artifacts::{ATA_MODULES, GUEST_MODULES, VIRTIO_MODULES};
        let known: Vec<&str> = ATA_MODULES
            .iter()
            .chain(GUEST_MODULES.iter())
            .chain(VIRTIO_MODULES.iter())
            .map(|m| m.rsplit('/').next().unwrap())
            .collect();
        for m in super::DISK_BASE_MODULES
            .iter()
            .chain(&super::INSTALLER_EXTRA_MODULES)
            .chain(&super::VIRTIO_PCI_MODULE_NAMES)
        {
            assert!(known.contains(m), "{m}");
        }
    }
}
