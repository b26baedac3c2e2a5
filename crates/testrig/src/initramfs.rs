//! Initramfs images as file trees: [`Initramfs`] collects directories, files (from
//! memory or from the host), symlinks and device nodes, creates missing parent
//! directories, and writes an uncompressed newc archive (see [`crate::cpio`]).
//!
//! [`guest_initramfs`] builds the L2 (guest) image: busybox with its applet symlinks,
//! /dev/console and /dev/null, and an `/init` script (the caller's, or
//! [`DEFAULT_GUEST_INIT`]).

use crate::cpio::Writer;
use crate::{err, run_tool, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A file on the host, read when the archive is written.
    Path(PathBuf),
}

impl From<Vec<u8>> for Source {
    fn from(b: Vec<u8>) -> Self {
        Source::Bytes(b)
    }
}

impl From<&str> for Source {
    fn from(s: &str) -> Self {
        Source::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Source {
    fn from(s: String) -> Self {
        Source::Bytes(s.into_bytes())
    }
}

impl From<&[u8]> for Source {
    fn from(b: &[u8]) -> Self {
        Source::Bytes(b.to_vec())
    }
}

impl From<PathBuf> for Source {
    fn from(p: PathBuf) -> Self {
        Source::Path(p)
    }
}

impl From<&Path> for Source {
    fn from(p: &Path) -> Self {
        Source::Path(p.to_path_buf())
    }
}

#[derive(Debug, Clone)]
enum Node {
    Dir(u32),
    File(u32, Source),
    Symlink(String),
    CharDev(u32, u32, u32),
}

/// A file tree to be written as an initramfs. Paths are absolute inside the image
/// ("/bin/sh"); adding a path again replaces it.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty tree with /dev/console (5:1) and /dev/null (1:3), without which init's
    /// output is lost before devtmpfs is mounted.
    pub fn with_console() -> Self {
        let mut t = Self::new();
        t.char_dev("/dev/console", 0o600, 5, 1);
        t.char_dev("/dev/null", 0o666, 1, 3);
        t
    }

    /// Add a directory (parents are created as needed).
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.insert(path, Node::Dir(perm))
    }

    /// Add a regular file.
    pub fn file(&mut self, path: &str, perm: u32, source: impl Into<Source>) -> &mut Self {
        self.insert(path, Node::File(perm, source.into()))
    }

    /// Add a symlink `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, Node::Symlink(target.to_string()))
    }

    /// Add a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.insert(path, Node::CharDev(perm, major, minor))
    }

    /// Whether the tree has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(&normalize(path))
    }

    fn insert(&mut self, path: &str, node: Node) -> &mut Self {
        let path = normalize(path);
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if p.is_empty() {
                break;
            }
            self.nodes.entry(p.to_string()).or_insert(Node::Dir(0o755));
            parent = p;
        }
        self.nodes.insert(path, node);
        self
    }

    /// Write the archive to `out`. Parents sort before their children, as the kernel's
    /// unpacker needs.
    pub fn write_to(&self, out: impl Write) -> Result<()> {
        let mut w = Writer::new(out);
        for (path, node) in &self.nodes {
            let r = match node {
                Node::Dir(perm) => w.dir(path, *perm),
                Node::Symlink(target) => w.symlink(path, target),
                Node::CharDev(perm, major, minor) => w.char_dev(path, *perm, *major, *minor),
                Node::File(perm, Source::Bytes(b)) => w.file(path, *perm, b),
                Node::File(perm, Source::Path(p)) => {
                    let mut f =
                        std::fs::File::open(p).ctx(|| format!("opening {}", p.display()))?;
                    let size = f.metadata().ctx(|| format!("stat {}", p.display()))?.len();
                    w.file_from(path, *perm, size, &mut f)
                }
            };
            r.ctx(|| format!("writing {path} to the initramfs"))?;
        }
        w.finish().ctx(|| "finishing the initramfs".to_string())?;
        Ok(())
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Write the archive to the file `path`.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let f = std::fs::File::create(path).ctx(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        self.write_to(&mut out)?;
        out.flush().ctx(|| format!("writing {}", path.display()))
    }
}

/// "bin//sh/" and "bin/sh" -> "/bin/sh".
fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Add busybox at /bin/busybox plus a symlink for each of its applets (from
/// `busybox --list-full`, which runs on the host: the binary is static).
pub fn add_busybox(tree: &mut Initramfs, busybox: &Path) -> Result<()> {
    let out = run_tool(Command::new(busybox).arg("--list-full"))
        .map_err(|e| err!("listing busybox applets: {e}"))?;
    tree.file("/bin/busybox", 0o755, busybox);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if applet.is_empty() || name == "busybox" || name == "linuxrc" {
            continue;
        }
        tree.symlink(applet, "/bin/busybox");
    }
    Ok(())
}

/// The default L2 init: mount proc, sysfs and devtmpfs, print `KILN-L2-USERSPACE-UP`,
/// run `/test.sh` if present (then print `KILN-L2-TEST-EXIT=<status>`), and `poweroff -f`.
pub const DEFAULT_GUEST_INIT: &str = r#"#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo KILN-L2-USERSPACE-UP
if [ -f /test.sh ]; then
    sh /test.sh
    echo "KILN-L2-TEST-EXIT=$?"
fi
poweroff -f
"#;

/// An L2 (guest) initramfs: busybox and its applets, /dev/console, /dev/null, /proc,
/// /sys, /tmp, and `/init` (`init`, or [`DEFAULT_GUEST_INIT`] when `None`). Add extra
/// files (e.g. `/test.sh`, modules) to the returned tree before writing it.
pub fn guest_initramfs(busybox: &Path, init: Option<&str>) -> Result<Initramfs> {
    let mut tree = Initramfs::with_console();
    add_busybox(&mut tree, busybox)?;
    for d in ["/proc", "/sys", "/tmp", "/root", "/etc"] {
        tree.dir(d, 0o755);
    }
    tree.file("/init", 0o755, init.unwrap_or(DEFAULT_GUEST_INIT));
    Ok(tree)
}

/// Add the kernel modules `names` (file stems of paths in `modules`, e.g. `virtio_net`)
/// as `/m/<name>.ko`, and the names in that order to `/modules`, which the tests' inits
/// `insmod` one by one. A name missing from `modules` is an error.
pub fn add_modules(tree: &mut Initramfs, modules: &[PathBuf], names: &[&str]) -> Result<()> {
    for name in names {
        let m = modules
            .iter()
            .find(|m| m.file_stem().is_some_and(|s| s == *name))
            .ok_or_else(|| err!("no module {name} among {} given", modules.len()))?;
        tree.file(&format!("/m/{name}.ko"), 0o644, m.as_path());
    }
    tree.file("/modules", 0o644, names.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

    #[test]
    fn creates_parents_first_and_replaces_duplicates() {
        let mut t = Initramfs::new();
        t.file("/a/b/c.txt", 0o644, "one");
        t.file("a//b/c.txt", 0o600, "two");
        t.symlink("/a-link", "/a");
        let e = parse(&t.to_bytes().unwrap()).unwrap();
        let got: Vec<(&str, u32)> = e.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        assert_eq!(
            got,
            [
                ("a", S_IFDIR | 0o755),
                ("a-link", S_IFLNK | 0o777),
                ("a/b", S_IFDIR | 0o755),
                ("a/b/c.txt", S_IFREG | 0o600),
            ]
        );
        assert_eq!(e[3].data, b"two");
    }

    #[test]
    fn reads_host_files_when_written() {
        let dir = crate::artifacts_dir().join(format!("initramfs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = dir.join("f");
        std::fs::write(&host, b"from the host").unwrap();
        let mut t = Initramfs::with_console();
        t.file("/x/f", 0o755, host.as_path());
        let bytes = t.to_bytes().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let e = parse(&bytes).unwrap();
        let f = e.iter().find(|e| e.name == "x/f").unwrap();
        assert_eq!(f.data, b"from the host");
        let c = e.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((c.mode, c.rdev), (S_IFCHR | 0o600, (5, 1)));
        let missing = Initramfs::new()
            .file("/y", 0o644, Path::new("/nonexistent/zz"))
            .to_bytes();
        assert!(missing.unwrap_err().0.contains("/nonexistent/zz"));
    }

    #[test]
    fn guest_image_has_busybox_applets_and_init() {
        let busybox = crate::artifacts::busybox().expect("busybox-static artifact");
        let mut t = guest_initramfs(&busybox, None).unwrap();
        t.file("/test.sh", 0o755, "echo hi\n");
        let e = parse(&t.to_bytes().unwrap()).unwrap();
        let find = |n: &str| {
            e.iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(find("bin/sh").data, b"/bin/busybox");
        assert_eq!(find("sbin/poweroff").data, b"/bin/busybox");
        assert_eq!(find("init").data, DEFAULT_GUEST_INIT.as_bytes());
        assert_eq!(find("init").mode, S_IFREG | 0o755);
        assert_eq!(find("dev/null").rdev, (1, 3));
        assert!(find("bin/busybox").data.starts_with(b"\x7fELF"));
        assert_eq!(find("test.sh").data, b"echo hi\n");
    }
}
