//! How many bytes a qcow2 image takes, as QEMU counts them (`qemu-img measure`, and the
//! file size of `preallocation=full`): the header cluster, L2 tables for every cluster,
//! the L1 table, and refcount blocks and table for all of those clusters including their
//! own. Refcount metadata counts itself, so its size is found by iterating to a fixed
//! point, as QEMU does; the results match qemu-img's to the byte.

/// Bytes of refcount blocks and refcount table needed to count `clusters` clusters plus
/// the refcount clusters themselves.
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_bits: u32) -> u64 {
    let per_block = cluster_size * 8 / u64::from(refcount_bits.max(1));
    let per_table_cluster = cluster_size / 8;
    let (mut blocks, mut table, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            return (blocks + table) * cluster_size;
        }
    }
}

/// Bytes of a fully allocated image of `virtual_size` bytes: its metadata plus every data
/// cluster.
pub fn fully_allocated_size(
    virtual_size: u64,
    cluster_size: u64,
    refcount_bits: u32,
    extended_l2: bool,
) -> u64 {
    let data = virtual_size.div_ceil(cluster_size) * cluster_size;
    let l2_entry = if extended_l2 { 16 } else { 8 };
    let mut meta = cluster_size; // the header
    let l2_entries = (data / cluster_size).next_multiple_of(cluster_size / l2_entry);
    meta += l2_entries * l2_entry;
    let l1_entries = (l2_entries * l2_entry / cluster_size).next_multiple_of(cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size((meta + data) / cluster_size, cluster_size, refcount_bits);
    meta + data
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures qemu-img 10 printed (`qemu-img measure -O qcow2 --size ...`).
    #[test]
    fn sizes_equal_qemu_imgs() {
        assert_eq!(
            fully_allocated_size(10 << 30, 65536, 16, false),
            10739318784
        );
        assert_eq!(
            fully_allocated_size(100 << 30, 4096, 1, false),
            107587604480
        );
        assert_eq!(fully_allocated_size(1 << 30, 65536, 16, false), 1074135040);
        assert_eq!(fully_allocated_size(1 << 30, 65536, 16, true), 1074266112);
        assert_eq!(fully_allocated_size(1 << 20, 65536, 16, false), 1376256);
        assert_eq!(fully_allocated_size(1000, 65536, 16, false), 393216);
    }
}
