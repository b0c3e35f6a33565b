//! Cluster `/who` and `/rooms`: the questions this node asks the others and
//! the merging of their answers, without I/O.
//!
//! One question is out at a time per node: askers of the same question while
//! it is out share its answer, other questions wait their turn (at most
//! [`MAX_WAITING`] askers; beyond, an asker gets this node's part at once). A
//! merged answer is kept for [`CACHE_FOR`] and given to anyone asking the
//! same again meanwhile, so a crowd typing `/rooms` costs the cluster one
//! question per node per period. Merged answers are capped ([`MAX_NICKS`],
//! [`MAX_ROOMS`]) whatever the other nodes send.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::chat::names::{valid_nick, valid_room, Folded};
use crate::chat::ConnId;

/// How long a merged answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// Askers waiting behind the question that is out.
pub const MAX_WAITING: usize = 4096;
/// Nicks kept from all answers to one `/who` (the hub shows at most its
/// `who_limit`; the total is counted regardless).
pub const MAX_NICKS: usize = 4096;
/// Rooms kept from all answers to one `/rooms`, and listed in one answer.
pub const MAX_ROOMS: usize = 10_000;
/// Merged answers kept in the cache.
const MAX_CACHED: usize = 256;

/// A question, by what it asks (rooms folded).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ask {
    /// `/who ROOM`.
    Who(Box<str>),
    /// `/rooms`.
    Rooms,
}

/// The other nodes' part of an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// `/who`: nicks (at most [`MAX_NICKS`]) and how many members in all.
    pub nicks: Vec<String>,
    /// Members in all on the other nodes (`/who`).
    pub total: usize,
    /// `/rooms`: (room, members) as the nodes listed them (at most [`MAX_ROOMS`]).
    pub rooms: Vec<(String, usize)>,
}

/// An asker and the room as it typed it (`/who`).
pub type Asker = (ConnId, Box<str>);

/// What [`Queries::ask`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer at once with this (a cached merge, or an empty one when too
    /// many wait).
    Answer(Merged),
    /// Publish this question with this id.
    Send(u64, Ask),
    /// It waits for the question out (the same, or another one).
    Wait,
}

/// A finished question: every asker gets `merged` added to this node's part.
#[derive(Debug)]
pub struct Done {
    /// What was asked.
    pub ask: Ask,
    /// Who asked.
    pub askers: Vec<Asker>,
    /// The other nodes' answers.
    pub merged: Merged,
    /// Not every node answered in time.
    pub timed_out: bool,
}

#[derive(Debug)]
struct Out {
    qid: u64,
    ask: Ask,
    askers: Vec<Asker>,
    merged: Merged,
    expected: Option<usize>,
    got: usize,
    deadline: Instant,
}

/// The questions of one node.
#[derive(Debug)]
pub struct Queries {
    timeout: Duration,
    out: Option<Out>,
    waiting: VecDeque<(Ask, Vec<Asker>)>,
    waiting_askers: usize,
    cache: HashMap<Ask, (Instant, Merged)>,
    next_qid: u64,
}

impl Queries {
    /// No question out; answers wait at most `timeout`.
    pub fn new(timeout: Duration) -> Queries {
        Queries {
            timeout,
            out: None,
            waiting: VecDeque::new(),
            waiting_askers: 0,
            cache: HashMap::new(),
            next_qid: 1,
        }
    }

    /// `id` asks `ask` (`room` as typed, for `/who`).
    pub fn ask(&mut self, id: ConnId, ask: Ask, room: &str, now: Instant) -> Step {
        if let Some((at, m)) = self.cache.get(&ask) {
            if now < *at + CACHE_FOR {
                return Step::Answer(m.clone());
            }
        }
        let asker = (id, Box::<str>::from(room));
        if let Some(out) = self.out.as_mut().filter(|o| o.ask == ask) {
            out.askers.push(asker);
            return Step::Wait;
        }
        if self.out.is_some() {
            if self.waiting_askers >= MAX_WAITING {
                return Step::Answer(Merged::default());
            }
            self.waiting_askers += 1;
            match self.waiting.iter_mut().find(|(a, _)| *a == ask) {
                Some((_, askers)) => askers.push(asker),
                None => self.waiting.push_back((ask, vec![asker])),
            }
            return Step::Wait;
        }
        self.start(ask, vec![asker], now)
    }

    fn start(&mut self, ask: Ask, askers: Vec<Asker>, now: Instant) -> Step {
        let qid = self.next_qid;
        self.next_qid += 1;
        self.out = Some(Out {
            qid,
            ask: ask.clone(),
            askers,
            merged: Merged::default(),
            expected: None,
            got: 0,
            deadline: now + self.timeout,
        });
        Step::Send(qid, ask)
    }

    /// After a question finished: the next one to publish, if any wait.
    pub fn next(&mut self, now: Instant) -> Option<(u64, Ask)> {
        if self.out.is_some() {
            return None;
        }
        let (ask, askers) = self.waiting.pop_front()?;
        self.waiting_askers -= askers.len();
        match self.start(ask, askers, now) {
            Step::Send(qid, ask) => Some((qid, ask)),
            _ => None,
        }
    }

    /// The room of the `/who` out as `qid`, folded.
    pub fn who_room(&self, qid: u64) -> Option<&str> {
        match self.out.as_ref().filter(|o| o.qid == qid)?.ask {
            Ask::Who(ref room) => Some(room),
            Ask::Rooms => None,
        }
    }

    /// `PUBLISH` answered: `n` other nodes got question `qid`.
    pub fn expect(&mut self, qid: u64, n: usize) {
        if let Some(o) = self.out.as_mut().filter(|o| o.qid == qid) {
            o.expected = Some(n);
        }
    }

    /// A node's answer to `/who` `qid`: `total` members, some `nicks`.
    pub fn who_answer(&mut self, qid: u64, total: u64, nicks: &str) {
        let Some(o) = self.out.as_mut().filter(|o| o.qid == qid) else {
            return;
        };
        if !matches!(o.ask, Ask::Who(_)) {
            return;
        }
        o.got += 1;
        let m = &mut o.merged;
        m.total = m
            .total
            .saturating_add(usize::try_from(total).unwrap_or(usize::MAX));
        let room = MAX_NICKS - m.nicks.len();
        m.nicks.extend(
            nicks
                .split(' ')
                .filter(|n| valid_nick(n))
                .take(room)
                .map(str::to_string),
        );
    }

    /// A node's answer to `/rooms` `qid`: `NAME=N` pairs, space-separated.
    pub fn rooms_answer(&mut self, qid: u64, list: &str) {
        let Some(o) = self.out.as_mut().filter(|o| o.qid == qid) else {
            return;
        };
        if o.ask != Ask::Rooms {
            return;
        }
        o.got += 1;
        let m = &mut o.merged;
        for part in list.split(' ').take(MAX_ROOMS) {
            if m.rooms.len() >= MAX_ROOMS {
                break;
            }
            if let Some((name, n)) = part.rsplit_once('=').filter(|(name, _)| valid_room(name)) {
                if let Ok(n) = n.parse() {
                    m.rooms.push((name.to_string(), n));
                }
            }
        }
    }

    /// The question out is finished (every node answered, its deadline
    /// passed, or `force`: it could not be asked): take it, cached.
    pub fn finished(&mut self, now: Instant, force: bool) -> Option<Done> {
        let o = self.out.as_ref()?;
        let complete = o.expected.is_some_and(|e| o.got >= e);
        if !(complete || force || now >= o.deadline) {
            return None;
        }
        let o = self.out.take()?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, (at, _)| now < *at + CACHE_FOR);
        }
        if self.cache.len() < MAX_CACHED && !force {
            self.cache.insert(o.ask.clone(), (now, o.merged.clone()));
        }
        Some(Done {
            ask: o.ask,
            askers: o.askers,
            merged: o.merged,
            timed_out: !complete,
        })
    }

    /// Another node's membership of `room` (folded) changed (`JOINED`,
    /// `LEFT`): cached answers that count it are stale.
    pub fn membership_changed(&mut self, room: &str) {
        if self.cache.is_empty() {
            return;
        }
        self.cache.remove(&Ask::Rooms);
        self.cache.remove(&Ask::Who(room.into()));
    }

    /// Another node's user changed nick: cached `/who` answers are stale.
    pub fn nicks_changed(&mut self) {
        if !self.cache.is_empty() {
            self.cache.retain(|a, _| *a == Ask::Rooms);
        }
    }

    /// When the question out gives up waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.out.as_ref().map(|o| o.deadline)
    }

    /// `id` left: it asks nothing any more.
    pub fn gone(&mut self, id: ConnId) {
        if let Some(o) = self.out.as_mut() {
            o.askers.retain(|(i, _)| *i != id);
        }
        for (_, askers) in self.waiting.iter_mut() {
            let before = askers.len();
            askers.retain(|(i, _)| *i != id);
            self.waiting_askers -= before - askers.len();
        }
        self.waiting.retain(|(_, a)| !a.is_empty());
    }
}

/// The key of `/who ROOM`.
pub fn who(room: &str) -> Option<Ask> {
    Folded::new(room).map(|k| Ask::Who(k.as_str().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_question_out_shared_queued_and_cached() {
        let t = Instant::now();
        let mut q = Queries::new(Duration::from_millis(500));
        let dev = who("Dev").unwrap();
        assert_eq!(q.ask(1, dev.clone(), "Dev", t), Step::Send(1, dev.clone()));
        // The same question shares the one out; another waits its turn.
        assert_eq!(q.ask(2, who("dev").unwrap(), "dev", t), Step::Wait);
        assert_eq!(q.ask(3, Ask::Rooms, "", t), Step::Wait);
        assert_eq!(q.ask(4, Ask::Rooms, "", t), Step::Wait);
        assert_eq!(q.next(t), None, "one at a time");
        q.expect(1, 2);
        q.who_answer(1, 3, "a b <bad> c");
        q.who_answer(7, 9, "zz");
        assert!(q.finished(t, false).is_none());
        q.who_answer(1, u64::MAX, "d");
        let d = q.finished(t, false).unwrap();
        assert!(!d.timed_out);
        assert_eq!(d.askers.len(), 2);
        assert_eq!(d.merged.nicks, ["a", "b", "c", "d"]);
        assert_eq!(d.merged.total, usize::MAX);
        // Cached for a while.
        assert!(matches!(q.ask(5, dev.clone(), "DEV", t), Step::Answer(m) if m.nicks.len() == 4));
        assert_eq!(q.next(t), Some((2, Ask::Rooms)));
        // Nobody answers: the deadline ends it, with both askers.
        let d = q.finished(t + Duration::from_millis(500), false).unwrap();
        assert!(d.timed_out);
        assert_eq!(d.askers.len(), 2);
        // Someone leaves dev on another node: not answered from the cache.
        q.membership_changed("dev");
        assert!(matches!(q.ask(7, dev.clone(), "dev", t), Step::Send(3, _)));
        assert!(q.finished(t, true).is_some());
        let later = t + CACHE_FOR + Duration::from_millis(1);
        assert!(matches!(q.ask(6, dev, "dev", later), Step::Send(4, _)));
    }

    #[test]
    fn waiting_and_answers_are_bounded() {
        let t = Instant::now();
        let mut q = Queries::new(Duration::from_millis(500));
        assert!(matches!(q.ask(0, Ask::Rooms, "", t), Step::Send(..)));
        for i in 1..=MAX_WAITING {
            assert_eq!(q.ask(i, who(&format!("r{i}")).unwrap(), "r", t), Step::Wait);
        }
        assert_eq!(
            q.ask(99_999, who("x").unwrap(), "x", t),
            Step::Answer(Merged::default())
        );
        q.gone(1);
        assert_eq!(q.waiting_askers, MAX_WAITING - 1);
        let list: String = (0..MAX_ROOMS + 10).map(|i| format!("r{i}=1 ")).collect();
        q.rooms_answer(1, &list);
        q.rooms_answer(1, &list);
        q.expect(1, 2);
        let d = q.finished(t, false).unwrap();
        assert_eq!(d.merged.rooms.len(), MAX_ROOMS);
    }
}
