//! The table of a disk's outstanding requests, indexed by request number in O(1).
//!
//! Request numbers are handed out in submission order, so the table is a window
//! `base..base + slots.len()` over them; completed requests leave holes that are trimmed from
//! the front.

use std::collections::VecDeque;

/// Outstanding requests keyed by their sequential request number.
#[derive(Debug)]
pub(crate) struct RequestTable<R> {
    base: u64,
    slots: VecDeque<Option<R>>,
    live: usize,
}

impl<R> Default for RequestTable<R> {
    fn default() -> Self {
        RequestTable { base: 0, slots: VecDeque::new(), live: 0 }
    }
}

impl<R> RequestTable<R> {
    /// Adds the request numbered `number`, which must be the next number after every earlier one.
    pub(crate) fn insert(&mut self, number: u64, request: R) {
        if self.slots.is_empty() {
            self.base = number;
        }
        assert_eq!(number, self.base + self.slots.len() as u64, "request numbers are sequential");
        self.slots.push_back(Some(request));
        self.live += 1;
    }

    pub(crate) fn get_mut(&mut self, number: &u64) -> Option<&mut R> {
        let index = number.checked_sub(self.base)?;
        self.slots.get_mut(usize::try_from(index).ok()?)?.as_mut()
    }

    pub(crate) fn remove(&mut self, number: &u64) -> Option<R> {
        let index = usize::try_from(number.checked_sub(self.base)?).ok()?;
        let request = self.slots.get_mut(index)?.take();
        if request.is_some() {
            self.live -= 1;
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        request
    }

    /// Outstanding requests with their numbers, in number order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &R)> {
        let base = self.base;
        self.slots.iter().enumerate().filter_map(move |(i, r)| r.as_ref().map(|r| (base + i as u64, r)))
    }

    /// Outstanding requests in number order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &R> {
        self.slots.iter().flatten()
    }

    /// Removes every request, yielding `(number, request)` in number order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, R)> + use<R> {
        let base = self.base;
        let slots = std::mem::take(&mut self.slots);
        self.live = 0;
        slots.into_iter().enumerate().filter_map(move |(i, r)| r.map(|r| (base + i as u64, r)))
    }

    /// How many requests are outstanding.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_trimmed_and_lookups_follow_numbers() {
        let mut table = RequestTable::default();
        for n in 10..15u64 {
            table.insert(n, n * 2);
        }
        assert_eq!(table.remove(&12), Some(24));
        assert_eq!(table.remove(&12), None);
        assert_eq!(table.remove(&10), Some(20));
        assert_eq!(table.get_mut(&10), None);
        assert_eq!(table.get_mut(&11), Some(&mut 22));
        assert_eq!(table.len(), 3);
        assert_eq!(table.drain().collect::<Vec<_>>(), vec![(11, 22), (13, 26), (14, 28)]);
        table.insert(20, 1);
        assert_eq!(table.values().count(), 1);
    }
}
