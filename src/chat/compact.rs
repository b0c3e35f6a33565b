//! Two compact containers for per-user state, because a server holds tens of
//! thousands of mostly idle users and each heap block costs 32 bytes or more:
//! a room list that keeps its first entry inline, and a nick index that stores
//! a 64-bit keyed hash instead of a copy of every nick.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};

/// A list that holds one element without a heap block (most users are in one
/// room), and spills to a `Vec` beyond that.
#[derive(Debug, Clone, Default)]
pub enum InlineList<T: Copy> {
    /// No element.
    #[default]
    Empty,
    /// One element, inline.
    One(T),
    /// Two or more (or any number after a spill).
    Many(Vec<T>),
}

impl<T: Copy> InlineList<T> {
    /// Append at the end.
    pub fn push(&mut self, v: T) {
        match self {
            InlineList::Empty => *self = InlineList::One(v),
            InlineList::One(a) => *self = InlineList::Many(vec![*a, v]),
            InlineList::Many(vec) => vec.push(v),
        }
    }

    /// Remove and return the element at `i`, keeping the order of the rest.
    /// Panics when `i` is out of range, like `Vec::remove` (callers check).
    pub fn remove(&mut self, i: usize) -> T {
        match self {
            InlineList::One(a) if i == 0 => {
                let a = *a;
                *self = InlineList::Empty;
                a
            }
            InlineList::Many(vec) => {
                let v = vec.remove(i);
                match vec.len() {
                    // Back to inline storage: the heap block is given back.
                    1 => *self = InlineList::One(vec[0]),
                    0 => *self = InlineList::Empty,
                    _ => {}
                }
                v
            }
            _ => panic!("InlineList::remove: index {i} out of range"),
        }
    }
}

impl<T: Copy> Deref for InlineList<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            InlineList::Empty => &[],
            InlineList::One(a) => std::slice::from_ref(a),
            InlineList::Many(v) => v,
        }
    }
}

impl<T: Copy> DerefMut for InlineList<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            InlineList::Empty => &mut [],
            InlineList::One(a) => std::slice::from_mut(a),
            InlineList::Many(v) => v,
        }
    }
}

/// Folded nick → owner, keyed by a 64-bit SipHash of the folded nick with a
/// random key (so clients cannot aim collisions). The nick itself lives once,
/// in the user. Two different nicks sharing a hash (about one chance in 2^64
/// per pair) make the second look taken: a harmless refusal, never a mix-up,
/// because lookups by name compare the owner's actual nick.
#[derive(Debug, Default)]
pub struct NickIndex {
    map: HashMap<u64, usize>,
    hasher: RandomState,
}

impl NickIndex {
    fn key(&self, folded: &str) -> u64 {
        self.hasher.hash_one(folded)
    }

    /// Whoever holds this hash slot, without checking the nick: use it to
    /// decide whether a nick is free.
    pub fn holder(&self, folded: &str) -> Option<usize> {
        self.map.get(&self.key(folded)).copied()
    }

    /// The owner of `folded`, confirmed with `nick_of` (the owner's folded nick).
    pub fn owner(&self, folded: &str, nick_of: impl Fn(usize) -> bool) -> Option<usize> {
        self.holder(folded).filter(|&id| nick_of(id))
    }

    /// Record `id` as the holder of `folded` (the caller checked it was free).
    pub fn insert(&mut self, folded: &str, id: usize) {
        let k = self.key(folded);
        self.map.insert(k, id);
    }

    /// Forget `folded` if `id` holds it.
    pub fn remove(&mut self, folded: &str, id: usize) {
        let k = self.key(folded);
        if self.map.get(&k) == Some(&id) {
            self.map.remove(&k);
        }
    }

    /// Nicks held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no nick is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every holder (for invariant checks).
    pub fn holders(&self) -> impl Iterator<Item = usize> + '_ {
        self.map.values().copied()
    }

    /// True when `folded` hashes to the slot `id` holds (for invariant checks).
    pub fn maps(&self, folded: &str, id: usize) -> bool {
        self.holder(folded) == Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_list_behaves_like_a_vec() {
        let mut l: InlineList<u32> = InlineList::default();
        let mut v: Vec<u32> = Vec::new();
        for op in [1u32, 2, 3, 100, 4, 101, 102, 5, 103, 104, 105, 106] {
            if op >= 100 && !v.is_empty() {
                let i = (op as usize) % v.len();
                assert_eq!(l.remove(i), v.remove(i));
            } else {
                l.push(op);
                v.push(op);
            }
            assert_eq!(&*l, &v[..]);
        }
        assert!(matches!(l, InlineList::Empty | InlineList::One(_)) || v.len() > 1);
    }

    #[test]
    fn one_element_needs_no_heap() {
        let mut l: InlineList<(u32, u32)> = InlineList::default();
        l.push((1, 2));
        assert!(matches!(l, InlineList::One(_)));
        l.push((3, 4));
        l.remove(0);
        assert!(
            matches!(l, InlineList::One((3, 4))),
            "spilled list returns inline"
        );
        assert!(std::mem::size_of::<InlineList<(u32, u32)>>() <= 24);
    }

    #[test]
    fn nick_index_confirms_owners() {
        let mut n = NickIndex::default();
        n.insert("alice", 3);
        assert_eq!(n.holder("alice"), Some(3));
        assert_eq!(n.owner("alice", |id| id == 3), Some(3));
        assert_eq!(n.owner("alice", |_| false), None);
        assert_eq!(n.holder("bob"), None);
        n.remove("alice", 4);
        assert_eq!(n.len(), 1, "only the holder removes");
        n.remove("alice", 3);
        assert!(n.is_empty());
    }
}
