//! The in-memory store: a [`Snapshot`] that ops are applied to. For tests,
//! and the reference the redb store is checked against.

use super::{Op, Snapshot, Store, StoreError};

/// Keeps everything in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Snapshot,
}

impl Store for MemoryStore {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.state.apply(ops);
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.state.clone())
    }
}
