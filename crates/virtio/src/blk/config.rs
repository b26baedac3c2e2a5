//! What virtio-blk offers the driver: feature bits and the device configuration space
//! (`struct virtio_blk_config`, virtio 1.2 §5.2.4), laid out with the offsets of
//! virtio-bindings' struct so they match the specification byte for byte.

use super::{MAX_DISCARD_SECTORS, SECTOR_SIZE, SEG_MAX};
use std::mem::{offset_of, size_of};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Size of the configuration space (the whole 1.2 struct, zoned part included).
pub(crate) const CONFIG_SIZE: usize = size_of::<virtio_blk_config>();

/// The feature bits offered (VIRTIO_F_VERSION_1 is the transport's).
pub(crate) fn features(read_only: bool) -> u64 {
    let mut f = bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC);
    if read_only {
        f |= bit(VIRTIO_BLK_F_RO);
    } else {
        f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    f
}

/// A feature bit number as a mask.
pub(crate) fn bit(n: u32) -> u64 {
    1u64 << n
}

/// The configuration space for a disk of `capacity` sectors (little-endian fields).
pub(crate) fn config_space(capacity: u64) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(virtio_blk_config, capacity),
        &capacity.to_le_bytes(),
    );
    // size_max stays 0: VIRTIO_BLK_F_SIZE_MAX is not offered (segments may be any size).
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &1u16.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_discard_sectors),
        &MAX_DISCARD_SECTORS.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_discard_seg),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, discard_sector_alignment),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        &MAX_DISCARD_SECTORS.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_seg),
        &1u32.to_le_bytes(),
    );
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    c
}

/// Copy `data.len()` bytes of `space` from `offset` into `data`; bytes beyond it read 0.
pub(crate) fn read_space(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(c: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(c[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn layout_matches_the_spec_offsets() {
        let c = config_space(0x1_2345_6789);
        assert_eq!(CONFIG_SIZE, 96);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            0x1_2345_6789
        );
        assert_eq!(le32(&c, 8), 0, "size_max");
        assert_eq!(le32(&c, 12), SEG_MAX);
        assert_eq!(le32(&c, 20), 512, "blk_size");
        assert_eq!(u16::from_le_bytes([c[34], c[35]]), 1, "num_queues");
        assert_eq!(le32(&c, 36), MAX_DISCARD_SECTORS);
        assert_eq!(le32(&c, 40), 1, "max_discard_seg");
        assert_eq!(le32(&c, 44), 1, "discard_sector_alignment");
        assert_eq!(le32(&c, 48), MAX_DISCARD_SECTORS);
        assert_eq!(le32(&c, 52), 1, "max_write_zeroes_seg");
        assert_eq!(c[56], 1, "write_zeroes_may_unmap");
    }

    #[test]
    fn reads_past_the_end_are_zero() {
        let c = config_space(8);
        let mut d = [0xffu8; 4];
        read_space(&c, 94, &mut d);
        assert_eq!(d, [0, 0, 0, 0]);
        read_space(&c, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0, 0]);
        read_space(&c, 0, &mut d);
        assert_eq!(d, [8, 0, 0, 0]);
    }

    #[test]
    fn read_only_drops_discard_and_write_zeroes() {
        let rw = features(false);
        let ro = features(true);
        assert_ne!(rw & bit(VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(ro & bit(VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(ro & bit(VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_ne!(ro & bit(VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    }
}
