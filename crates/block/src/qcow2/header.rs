//! The qcow2 header and its extensions: parsing with strict validation, and building the
//! header cluster exactly as qemu-img lays it out (header, backing-format extension,
//! feature-name table, end marker, backing file name).

use crate::{Error, Result};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Incompatible feature: the image was not closed cleanly (lazy refcounts in use).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: metadata is corrupt; open read-only only.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: guest data lives in an external file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature: the compression type field is valid.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature: 128-bit L2 entries with 32 subclusters.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Compatible feature: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension: full disk encryption header.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: persistent dirty bitmaps (QEMU's; Kiln keeps none).
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Autoclear bit: the bitmaps extension is consistent with the image.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Largest L1 table QEMU accepts, in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts, in bytes.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Compression algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (zlib without header), QEMU's default.
    Zlib,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// A parsed qcow2 header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters in the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of refcount bits (0..=6).
    pub refcount_order: u32,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// Compression type.
    pub compression: Compression,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
    /// Backing format from the header extension, if any.
    pub backing_format: Option<String>,
    /// Feature name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
    /// The bitmaps extension: (bitmap count, directory size, directory offset).
    pub bitmaps: Option<(u32, u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128-bit with subclusters.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Bits per refcount.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Whether lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// The name of feature bit `bit` of type `ty` from the feature-name table.
    fn feature_name(&self, ty: u8, bit: u32) -> String {
        self.feature_names
            .iter()
            .find(|(t, b, _)| *t == ty && u32::from(*b) == bit)
            .map(|(_, _, n)| n.clone())
            .unwrap_or_else(|| format!("unknown feature bit {bit}"))
    }

    /// Parse and validate the header from the image's first cluster (or more, if short).
    /// `file_len` bounds the table checks.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < 72 || be32(buf, 0) != MAGIC {
            return invalid("not a qcow2 image (bad magic)");
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return invalid(format!(
                "cluster size 2^{cluster_bits} out of range (512 B to 2 MiB)"
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            bitmaps: None,
        };
        if be32(buf, 32) != 0 {
            return Err(Error::Unsupported(
                "encrypted qcow2 images are not supported".into(),
            ));
        }
        if version == 3 {
            if buf.len() < 104 {
                return invalid("qcow2 header too short");
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 {
                return invalid("qcow2 header too short");
            }
            if u64::from(h.header_length) > cluster_size {
                return invalid("qcow2 header exceeds cluster size");
            }
            if h.refcount_order > 6 {
                return invalid(format!(
                    "refcount order {} out of range (0..6)",
                    h.refcount_order
                ));
            }
            let ctype = if h.header_length > 104 { buf[104] } else { 0 };
            let has_bit = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
            h.compression = match (ctype, has_bit) {
                (0, _) => Compression::Zlib,
                (1, true) => Compression::Zstd,
                (1, false) => {
                    return invalid(
                        "compression type zstd without the compression type feature bit",
                    )
                }
                (t, _) => return invalid(format!("unknown compression type {t}")),
            };
        }
        h.parse_extensions(buf)?;
        h.check_features()?;
        h.validate(cluster_size)?;
        if h.backing_file_offset != 0 {
            let len = h.backing_file_size as usize;
            if len > 1023 {
                return invalid("backing file name too long");
            }
            let start = h.backing_file_offset as usize;
            if h.backing_file_offset > cluster_size || start + len > buf.len() {
                return invalid("backing file name lies outside the header cluster");
            }
            let name = String::from_utf8(buf[start..start + len].to_vec())
                .map_err(|_| Error::Invalid("backing file name is not UTF-8".into()))?;
            if !name.is_empty() {
                h.backing_file = Some(name);
            }
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<()> {
        let cluster = (self.cluster_size() as usize).min(buf.len());
        let end = if self.backing_file_offset != 0 {
            (self.backing_file_offset as usize).min(cluster)
        } else {
            cluster
        };
        let mut at = self.header_length as usize;
        while at + 8 <= end {
            let ty = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            at += 8;
            if ty == 0 {
                return Ok(());
            }
            if len > end - at {
                return invalid("header extension exceeds the header cluster");
            }
            let data = &buf[at..at + len];
            match ty {
                EXT_BACKING_FORMAT => {
                    let s = String::from_utf8(data.to_vec())
                        .map_err(|_| Error::Invalid("backing format name is not UTF-8".into()))?;
                    self.backing_format = Some(s);
                }
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name_bytes = &e[2..];
                        let n = name_bytes.iter().position(|&c| c == 0).unwrap_or(46);
                        let name = String::from_utf8_lossy(&name_bytes[..n]).into_owned();
                        self.feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_BITMAPS if len == 24 => {
                    self.bitmaps = Some((be32(data, 0), be64(data, 8), be64(data, 16)));
                }
                EXT_CRYPTO => {
                    return Err(Error::Unsupported(
                        "encrypted qcow2 images are not supported".into(),
                    ))
                }
                _ => {}
            }
            at += len.div_ceil(8) * 8;
        }
        Ok(())
    }

    fn check_features(&self) -> Result<()> {
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
        let unknown = self.incompatible_features & !known;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| {
                    if 1u64 << b == INCOMPAT_DATA_FILE {
                        "external data file".to_string()
                    } else {
                        self.feature_name(0, b)
                    }
                })
                .collect();
            return Err(Error::Unsupported(format!(
                "unsupported qcow2 feature(s): {}",
                names.join(", ")
            )));
        }
        Ok(())
    }

    fn validate(&self, cluster_size: u64) -> Result<()> {
        let aligned = |off: u64| off.is_multiple_of(cluster_size);
        if self.size > 1 << 61 {
            return invalid(format!("virtual size {} too large", self.size));
        }
        if !aligned(self.l1_table_offset) || !aligned(self.refcount_table_offset) {
            return invalid("L1 or refcount table offset is not cluster aligned");
        }
        if self.refcount_table_clusters == 0 || self.refcount_table_offset == 0 {
            return invalid("image has no refcount table");
        }
        if u64::from(self.refcount_table_clusters) * cluster_size > MAX_REFTABLE_BYTES {
            return invalid("refcount table too large");
        }
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return invalid("active L1 table too large");
        }
        if u64::from(self.l1_size) < size_to_l1(self.size, self.cluster_bits, self.l2_entries()) {
            return invalid("L1 table is too small for the image size");
        }
        if self.l1_size > 0 && self.l1_table_offset == 0 {
            return invalid("L1 table has no offset");
        }
        if self.nb_snapshots > 65536 {
            return invalid("too many snapshots");
        }
        if self.nb_snapshots > 0 && !aligned(self.snapshots_offset) {
            return invalid("snapshot table offset is not cluster aligned");
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            // QEMU never creates these; the format needs 32 subclusters of >= 512 B.
            return invalid("extended L2 entries need clusters of at least 16 KiB");
        }
        Ok(())
    }
}

/// L1 entries needed for a disk of `size` bytes.
pub fn size_to_l1(size: u64, cluster_bits: u32, l2_entries: u64) -> u64 {
    let per_l1 = (1u64 << cluster_bits) * l2_entries;
    size.div_ceil(per_l1)
}

/// Options for a new image's header.
#[derive(Debug, Clone)]
pub struct NewHeader<'a> {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// log2 of refcount bits.
    pub refcount_order: u32,
    /// Lazy refcounts (v3 only).
    pub lazy_refcounts: bool,
    /// Extended L2 (v3 only).
    pub extended_l2: bool,
    /// Compression type (v3 only).
    pub compression: Compression,
    /// Backing file name.
    pub backing_file: Option<&'a str>,
    /// Backing format.
    pub backing_format: Option<&'a str>,
    /// L1 entries and offset.
    pub l1: (u32, u64),
    /// Refcount table offset and clusters.
    pub reftable: (u64, u32),
}

/// The feature-name table qemu writes into every v3 image.
const FEATURE_TABLE: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

/// Build the header cluster of a new image, laid out as qemu-img does.
pub fn build(h: &NewHeader<'_>) -> Result<Vec<u8>> {
    let cs = 1usize << h.cluster_bits;
    let mut b = vec![0u8; 112];
    let put32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 =
        |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, h.version);
    put32(&mut b, 20, h.cluster_bits);
    put64(&mut b, 24, h.size);
    put32(&mut b, 36, h.l1.0);
    put64(&mut b, 40, h.l1.1);
    put64(&mut b, 48, h.reftable.0);
    put32(&mut b, 56, h.reftable.1);
    if h.version == 3 {
        let mut incompat = 0;
        if h.extended_l2 {
            incompat |= INCOMPAT_EXTL2;
        }
        if h.compression == Compression::Zstd {
            incompat |= INCOMPAT_COMPRESSION;
            b[104] = 1;
        }
        put64(&mut b, 72, incompat);
        put64(
            &mut b,
            80,
            if h.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            },
        );
        put32(&mut b, 96, h.refcount_order);
        put32(&mut b, 100, 112);
    } else {
        b.truncate(72);
    }
    let ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(8) * 8, 0);
    };
    if let Some(fmt) = h.backing_format {
        ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
    }
    // qemu leaves the feature-name table out when clusters are 4 KiB or smaller.
    if h.version == 3 && cs > 4096 {
        let mut t = Vec::new();
        for (ty, bit, name) in FEATURE_TABLE {
            let mut e = [0u8; 48];
            e[0] = ty;
            e[1] = bit;
            e[2..2 + name.len()].copy_from_slice(name.as_bytes());
            t.extend_from_slice(&e);
        }
        ext(&mut b, EXT_FEATURE_TABLE, &t);
    }
    // End of extensions.
    b.extend_from_slice(&[0u8; 8]);
    if let Some(name) = h.backing_file {
        if name.len() > 1023 {
            return Err(Error::InvalidArgument("backing file name too long".into()));
        }
        let off = b.len() as u64;
        b[8..16].copy_from_slice(&off.to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
    }
    if b.len() > cs {
        return Err(Error::InvalidArgument(format!(
            "header and extensions ({} bytes) do not fit in a {cs}-byte cluster",
            b.len()
        )));
    }
    b.resize(cs, 0);
    Ok(b)
}
