//! When the leader writes its checkpoint (adr/0051): once its writes have **settled**, before
//! it hands over the next keys. Then what the core holds of every key written so far is what
//! `desired-state` holds (nothing in flight, no failed write unresolved), and every index
//! stored says what the core holds of its device (none pending, none in flight). So each key
//! written before the checkpoint is named, with its hash, by the latest index of its device,
//! and stays so until a later write of it, which lands after the checkpoint in the stream.
//! Keys decided and not handed over yet do not matter: they land after it. Under a steady
//! stream of changes this is the moment after each round of indexes (at most
//! [`INDEX_MAX_HOLD`] apart), so a restart rarely reads many keys.
//!
//! A write that failed may still have landed: its key is *uncertain* until a later write of it
//! is acknowledged, and any decision about it is written even when it is what the core holds
//! (the tick retries it: the same revision, or a delete once the device no longer matches).
//! Writes settle only when no key is uncertain.
//!
//! [`INDEX_MAX_HOLD`]: super::INDEX_MAX_HOLD

use super::Effect;
use super::reconciler::Reconciler;
use crate::kv::Checkpoint;

impl Reconciler {
    /// Whether every write is acknowledged and indexed: the checkpoint's condition.
    pub(super) fn settled(&self) -> bool {
        self.converged
            && self.leader
            && self.in_flight.is_empty()
            && !self.indexes_in_flight
            && !self.indexes.has_pending()
            && self.uncertain.is_empty()
    }

    /// Writes the checkpoint once writes have settled after any was acknowledged (and once
    /// after the cold start or a takeover, so that the next start reads from here).
    pub(super) fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_due || !self.settled() {
            return;
        }
        self.checkpoint_due = false;
        let checkpoint = Checkpoint::new(self.indexes.stored_count() as u64);
        self.emit(Effect::WriteCheckpoint(checkpoint));
    }

    /// After [`Input::Drain`](super::Input::Drain): whether everything decided is written, the
    /// checkpoint after it handed over and the reports snapshot saved (a standby, or a cold
    /// start not converged yet, has nothing to write). A failed write keeps it false: the
    /// shell stops waiting at its deadline.
    pub fn drained(&self) -> bool {
        if !self.leader || !self.converged {
            return true;
        }
        !self.writing()
            && self.ops.is_empty()
            && self.parked.is_empty()
            && !self.indexes.has_pending()
            && !self.checkpoint_due
            && self.snapshots.settled()
    }
}
