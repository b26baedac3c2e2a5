//! `/dev/kvm` preflight: open the device and check that it is a KVM this Kiln can drive,
//! turning each way that fails into one clear sentence.
//!
//! The version and capability checks go through [`KvmSystem`], a narrow trait over the
//! two ioctls involved, so tests can present a KVM of another version or without a
//! capability. Opening the device is tested for real (missing path, a non-KVM device,
//! no permission as an unprivileged uid).

use kvm_ioctls::{Cap, Kvm};
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The KVM API version Kiln speaks (stable since Linux 2.6.22).
pub const KVM_API_VERSION: i32 = 12;
/// Where the device usually lives.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";
/// Environment variable naming another device path (for tests).
pub const KVM_PATH_ENV: &str = "KILN_KVM_DEVICE";

/// Capabilities Kiln needs, with the names users can look up.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ReadonlyMem, "KVM_CAP_READONLY_MEM"),
];

/// Why `/dev/kvm` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    /// Nothing at the path.
    #[error("{0} does not exist: KVM is not available (load kvm_intel or kvm_amd, and enable virtualization in the firmware)")]
    Missing(PathBuf),
    /// The caller may not open it.
    #[error("no permission to open {path} ({mode}): {fix}")]
    Permission {
        /// The device.
        path: PathBuf,
        /// Its mode and owner, as `ls -l` would show them.
        mode: String,
        /// What would fix it.
        fix: String,
    },
    /// Something that is not KVM.
    #[error("{0} is not a KVM device ({1})")]
    NotKvm(PathBuf, String),
    /// Another API version.
    #[error("{path} speaks KVM API version {found}, Kiln needs version {KVM_API_VERSION}")]
    Version {
        /// The device.
        path: PathBuf,
        /// What it reported.
        found: i32,
    },
    /// A capability is missing.
    #[error("{path} lacks {cap}, which Kiln needs")]
    MissingCapability {
        /// The device.
        path: PathBuf,
        /// The capability's name.
        cap: &'static str,
    },
    /// Opening failed for another reason.
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, String),
}

/// The two ioctls the version and capability checks need.
pub trait KvmSystem {
    /// KVM_GET_API_VERSION (negative on ioctl failure).
    fn api_version(&self) -> i32;
    /// KVM_CHECK_EXTENSION.
    fn has_capability(&self, cap: Cap) -> bool;
}

impl KvmSystem for Kvm {
    fn api_version(&self) -> i32 {
        self.get_api_version()
    }

    fn has_capability(&self, cap: Cap) -> bool {
        self.check_extension(cap)
    }
}

/// The device path to use: the explicit one, else `$KILN_KVM_DEVICE`, else `/dev/kvm`.
pub fn kvm_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(KVM_PATH_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_PATH))
}

/// Check a KVM's version and capabilities.
pub fn check_system(path: &Path, sys: &dyn KvmSystem) -> Result<(), PreflightError> {
    let found = sys.api_version();
    if found < 0 {
        return Err(PreflightError::NotKvm(
            path.into(),
            "it does not answer KVM_GET_API_VERSION".into(),
        ));
    }
    if found != KVM_API_VERSION {
        return Err(PreflightError::Version {
            path: path.into(),
            found,
        });
    }
    for &(cap, name) in REQUIRED_CAPS {
        if !sys.has_capability(cap) {
            return Err(PreflightError::MissingCapability {
                path: path.into(),
                cap: name,
            });
        }
    }
    Ok(())
}

/// Open the device at `path` and check it.
pub fn open(path: &Path) -> Result<Kvm, PreflightError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(PreflightError::Missing(path.into()))
        }
        Err(e) => return Err(PreflightError::Open(path.into(), e.to_string())),
    };
    if !meta.file_type().is_char_device() {
        return Err(PreflightError::NotKvm(
            path.into(),
            "not a character device".into(),
        ));
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(permission_error(path, &meta))
        }
        Err(e) => return Err(PreflightError::Open(path.into(), e.to_string())),
    };
    // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor, which `Kvm`
    // then owns and closes; no other handle to it exists.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    check_system(path, &kvm)?;
    Ok(kvm)
}

/// `_IO(KVMIO, 0x71)`: kvm-ioctls has no wrapper for it.
const KVM_REINJECT_CONTROL: libc::c_ulong = (kvm_bindings::KVMIO as libc::c_ulong) << 8 | 0x71;

/// Turn off the in-kernel PIT's tick reinjection (QEMU's `lost_tick_policy=discard`):
/// every period then raises IRQ 0, whether or not the guest acknowledged the last one.
/// With reinjection on, one tick that is never acknowledged (delivered while the guest
/// reprograms its PIC and IOAPIC) stops the PIT for good, and a guest that calibrates its
/// LAPIC timer against the PIT waits for ever. Firmware guests use the PIT that way.
pub fn pit_discard_lost_ticks(vm: &kvm_ioctls::VmFd) -> std::io::Result<()> {
    let ctl = kvm_bindings::kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads one `kvm_reinject_control` from the pointer,
    // which refers to a live, initialized struct of exactly that type for the call; the
    // fd is the VM's. The return value is checked.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_REINJECT_CONTROL, &ctl) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn permission_error(path: &Path, meta: &std::fs::Metadata) -> PreflightError {
    let mode = meta.mode();
    let user = name_of("/etc/passwd", meta.uid());
    let group = name_of("/etc/group", meta.gid());
    let fix = if mode & 0o060 == 0o060 && meta.gid() != 0 {
        format!(
            "add your user to the '{group}' group (usermod -aG {group} $USER, then log in again)"
        )
    } else {
        format!(
            "make it group-accessible (chgrp kvm {p} && chmod 0660 {p}) and add your user to the 'kvm' group, or run as root",
            p = path.display()
        )
    };
    PreflightError::Permission {
        path: path.into(),
        mode: format!("{} {user}:{group}", mode_string(mode)),
        fix,
    }
}

fn mode_string(mode: u32) -> String {
    let mut s = String::from("c");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The name for `id` in an /etc/passwd-style file, or the number.
fn name_of(db: &str, id: u32) -> String {
    std::fs::read_to_string(db)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                let num = f.nth(1)?;
                (num.parse::<u32>().ok()? == id).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reinject_control_is_kvmio_0x71() {
        assert_eq!(super::KVM_REINJECT_CONTROL, 0xae71);
    }

    use super::*;

    struct FakeKvm {
        version: i32,
        missing: Option<Cap>,
    }

    impl KvmSystem for FakeKvm {
        fn api_version(&self) -> i32 {
            self.version
        }
        fn has_capability(&self, cap: Cap) -> bool {
            Some(cap) != self.missing
        }
    }

    #[test]
    fn version_and_capability_errors_name_the_problem() {
        let p = Path::new("/dev/kvm");
        let ok = FakeKvm {
            version: 12,
            missing: None,
        };
        assert_eq!(check_system(p, &ok), Ok(()));
        let old = FakeKvm {
            version: 11,
            missing: None,
        };
        assert_eq!(
            check_system(p, &old).unwrap_err().to_string(),
            "/dev/kvm speaks KVM API version 11, Kiln needs version 12"
        );
        let no_imm = FakeKvm {
            version: 12,
            missing: Some(Cap::ImmediateExit),
        };
        assert_eq!(
            check_system(p, &no_imm).unwrap_err().to_string(),
            "/dev/kvm lacks KVM_CAP_IMMEDIATE_EXIT, which Kiln needs"
        );
        let broken = FakeKvm {
            version: -1,
            missing: None,
        };
        assert!(matches!(
            check_system(p, &broken),
            Err(PreflightError::NotKvm(..))
        ));
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(0o600), "crw-------");
        assert_eq!(mode_string(0o660), "crw-rw----");
    }

    #[test]
    fn path_selection_prefers_explicit() {
        assert_eq!(kvm_path(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
