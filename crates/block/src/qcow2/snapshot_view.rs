//! Reading an internal snapshot's disk as it was (`qemu-img convert -l snapshot.name=`):
//! a read-only image switches its active L1 table, in memory only, to the snapshot's.
//! Nothing is written. As in QEMU, the image keeps its current size: past the end of the
//! snapshot's disk everything reads as unallocated.

use super::Qcow2;
use crate::{Error, Result};

impl Qcow2 {
    /// From now on, read the snapshot `id_or_name` (IDs first, as qemu-img) instead of
    /// the active image. The image must be open read-only.
    pub fn view_snapshot(&mut self, id_or_name: &str) -> Result<()> {
        if !self.read_only {
            return Err(Error::ReadOnly(
                "a snapshot can only be read from an image opened read-only".into(),
            ));
        }
        let Some(idx) = self.find_snapshot(id_or_name) else {
            return Err(Error::InvalidArgument(format!(
                "Failed to load snapshot: Can't find snapshot '{id_or_name}'"
            )));
        };
        let sn = self.snapshots[idx].clone();
        self.l1 = self.snapshot_l1(&sn)?;
        Ok(())
    }
}
