//! qcow2 block status (qemu's `qcow2_co_block_status` view): runs of clusters with the
//! same kind, plain data runs only while their host clusters are contiguous.

use super::{Mapping, Qcow2, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COMPRESSED};
use crate::{BlockStatus, Result};

impl Qcow2 {
    /// [`Qcow2::lookup`], but a guest range without an L2 table is skipped whole (to the
    /// end of what its L1 entry maps), so huge sparse images are walked quickly. The third
    /// value is the host cluster of an unallocated subcluster (extended L2), or 0.
    fn span(&mut self, at: u64) -> Result<(Mapping, u64, u64)> {
        let (i1, _) = self.indices(at);
        let mapped = self.l1.get(i1).is_some_and(|e| e & L1_OFFSET_MASK != 0);
        if mapped {
            let (m, n) = self.lookup(at)?;
            let mut host = 0;
            if m == Mapping::Unallocated && self.h.extended_l2() {
                let e = self.l2_entry(at)?.map_or(0, |x| x.0);
                if e & OFLAG_COMPRESSED == 0 {
                    host = e & L2_OFFSET_MASK;
                }
            }
            return Ok((m, n, host));
        }
        let per_l1 = self.cluster_size * self.h.l2_entries();
        Ok((Mapping::Unallocated, per_l1 - at % per_l1, 0))
    }

    /// The status of the range at `offset` (at most `len` bytes, `len > 0`; range checked
    /// by the caller). Unallocated ranges read as zeros (`zero`) when there is no backing
    /// file or they lie past its end; the run is cut at the backing file's end.
    pub(crate) fn status_at(&mut self, offset: u64, len: u64) -> Result<BlockStatus> {
        let bsize = match self.backing.as_ref() {
            Some(b) => Some(b.size()),
            None if self.h.backing_file.is_some() => Some(u64::MAX),
            None => None,
        };
        let classify = |m: Mapping, at: u64, in_cluster: u64, alloc: u64| -> BlockStatus {
            let mut s = BlockStatus {
                len: 0,
                allocated: true,
                zero: false,
                data: false,
                compressed: false,
                offset: None,
            };
            match m {
                Mapping::Unallocated => {
                    s.allocated = false;
                    s.zero = bsize.is_none_or(|b| at >= b);
                    s.offset = (alloc != 0).then_some(alloc + in_cluster);
                }
                Mapping::Zero { host } => {
                    s.zero = true;
                    s.offset = (host != 0).then_some(host + in_cluster);
                }
                Mapping::Data { host, .. } => {
                    s.data = true;
                    s.offset = Some(host + in_cluster);
                }
                Mapping::Compressed { .. } => {
                    s.data = true;
                    s.compressed = true;
                }
            }
            s
        };
        let cs = self.cluster_size;
        let (m, n, alloc) = self.span(offset)?;
        let mut st = classify(m, offset, offset % cs, alloc);
        st.len = n.min(len);
        // Cut unallocated runs at the backing file's end (the zero flag changes there).
        let limit = match (m, bsize) {
            (Mapping::Unallocated, Some(b)) if offset < b => (b - offset).min(len),
            _ => len,
        };
        st.len = st.len.min(limit);
        while st.len < limit {
            let at = offset + st.len;
            let (m, n, alloc) = self.span(at)?;
            let mut next = classify(m, at, at % cs, alloc);
            let contiguous = match (st.offset, next.offset) {
                (Some(o), Some(p)) => o + st.len == p,
                (None, None) => true,
                _ => false,
            };
            if !contiguous {
                break;
            }
            next.offset = st.offset;
            next.len = st.len;
            if next != st {
                break;
            }
            st.len = (st.len + n).min(limit);
        }
        Ok(st)
    }
}
