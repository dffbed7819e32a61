//! The table of revisions that per-pair records refer to by a 4-byte id: the fleet state's
//! pairs ([`crate::aggregate`], see its "Memory") and the per-device indexes
//! ([`crate::device_index`]). A fleet has about as many revisions as Deployment versions.

use std::hash::Hash;
use std::num::NonZeroU32;

use foldhash::{HashMap, HashMapExt};

/// Index of a revision in [`Revisions`] (plus one).
pub(crate) type RevId = NonZeroU32;

/// The revisions entries refer to, each held once with the number of references to it; a
/// slot is reused once nothing refers to its revision.
#[derive(Debug)]
pub(crate) struct Revisions<R> {
    slots: Vec<Option<(R, u32)>>,
    ids: HashMap<R, RevId>,
    free: Vec<RevId>,
}

impl<R> Default for Revisions<R> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            ids: HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl<R: Clone + Eq + Hash> Revisions<R> {
    /// The id of `rev`, taking a reference to it.
    pub(crate) fn acquire(&mut self, rev: &R) -> RevId {
        if let Some(id) = self.ids.get(rev) {
            if let Some((_, refs)) = &mut self.slots[slot(*id)] {
                *refs += 1;
            }
            return *id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[slot(id)] = Some((rev.clone(), 1));
                id
            }
            None => {
                self.slots.push(Some((rev.clone(), 1)));
                // More than u32::MAX revisions in use cannot be held in memory anyway.
                NonZeroU32::new(u32::try_from(self.slots.len()).unwrap_or(u32::MAX))
                    .unwrap_or(NonZeroU32::MAX)
            }
        };
        self.ids.insert(rev.clone(), id);
        id
    }

    /// Drops one reference to `id`; the revision is forgotten with its last reference.
    pub(crate) fn release(&mut self, id: RevId) {
        let entry = &mut self.slots[slot(id)];
        let Some((rev, refs)) = entry else {
            return;
        };
        *refs -= 1;
        if *refs == 0 {
            self.ids.remove(rev);
            *entry = None;
            self.free.push(id);
        }
    }

    pub(crate) fn get(&self, id: RevId) -> Option<&R> {
        self.slots[slot(id)].as_ref().map(|(rev, _)| rev)
    }

    /// Revisions in use.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Slots allocated, used or free (tests: slots are reused).
    #[cfg(test)]
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }
}

fn slot(id: RevId) -> usize {
    // u32 → usize never truncates on the 32- and 64-bit targets Rust supports here.
    usize::try_from(id.get() - 1).unwrap_or(usize::MAX)
}
