//! qcow2 block status (qemu's `qcow2_co_block_status` view): runs of clusters with the
//! same kind, plain data runs only while their host clusters are contiguous.

use super::{Mapping, Qcow2};
use crate::{BlockStatus, Result};

impl Qcow2 {
    /// The status of the range at `offset` (at most `len` bytes, `len > 0`; range checked
    /// by the caller). Unallocated ranges read as zeros (`zero`) when there is no backing
    /// file or they lie past its end; the run is cut at the backing file's end.
    pub(crate) fn status_at(&mut self, offset: u64, len: u64) -> Result<BlockStatus> {
        let bsize = match self.backing.as_ref() {
            Some(b) => Some(b.size()),
            None if self.h.backing_file.is_some() => Some(u64::MAX),
            None => None,
        };
        let classify = |m: Mapping, at: u64, in_cluster: u64| -> BlockStatus {
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
        let (m, n) = self.lookup(offset)?;
        let mut st = classify(m, offset, offset % cs);
        st.len = n.min(len);
        // Cut unallocated runs at the backing file's end (the zero flag changes there).
        let limit = match (m, bsize) {
            (Mapping::Unallocated, Some(b)) if offset < b => (b - offset).min(len),
            _ => len,
        };
        st.len = st.len.min(limit);
        while st.len < limit {
            let at = offset + st.len;
            let (m, n) = self.lookup(at)?;
            let mut next = classify(m, at, at % cs);
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
