//! The event loop of `loopchat load`: one mio Poll, a slab of client
//! connections, corked writes flushed once per loop turn.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::payload::{classify, parse_payload, write_payload, Line};
use super::report::{Latency, LoadResult, Sample, ServerStats};
use super::{Mode, Plan, Protocol};
use crate::chat::ErrorCode;
use crate::sys::{self, ProcSample};
use crate::ws::deflate::{Deflater, Inflater, CLIENT_OFFER};
use crate::ws::endpoint::{CloseState, Endpoint};
use crate::ws::frame::{encode_frame, OpCode, Role};
use crate::ws::handshake::{generate_key, parse_response_ext, write_client_request_ext, Status};
use crate::ws::message::{Limits, Message};

const MAX_HEAD: usize = 16 * 1024;
const READ_BUF: usize = 256 * 1024;
/// Wait after the last connection is up before plain servers get the first
/// message (they may register a client just after sending the 101).
const PLAIN_SETTLE: Duration = Duration::from_millis(200);
/// Longest wait for the close handshake at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Idle,
    Receiver,
    Sender(u32),
    Churn(u32),
    Echo,
    /// Resume mode: the connection of session slot N (taking it, or resuming it).
    Session(u32),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Handshake,
    Open,
    /// We sent a close; waiting for the server's close and its EOF.
    Closing,
}

struct Conn {
    sock: TcpStream,
    kind: Kind,
    state: State,
    key: String,
    head: Vec<u8>,
    /// Receiver, close state and negotiated compression.
    ws: Endpoint,
    wbuf: Vec<u8>,
    /// Ready for traffic: in its room (loopchat) or open (plain).
    ready: bool,
    /// Write side is blocked until the next writable event.
    blocked: bool,
    dirty: bool,
    started: Instant,
    /// Churn: its message came back. Resume: its resume was answered
    /// (or refused), and counted.
    done: bool,
    /// Resume: `MSG` lines still to come after `RESUMED ROOM COUNT`.
    msgs_left: u32,
}

/// Resume mode: one session the generator holds.
#[derive(Default, Clone)]
struct Slot {
    /// The latest `SESSION` token (single-use: every resume hands out a new one).
    token: String,
    /// Its connection is in the room (taking the session).
    joined: bool,
    /// The last round in which it was resumed (0: taken, never resumed yet).
    round: u32,
    /// The server's `CAPS` answer left `resume` out: no session will come.
    unoffered: bool,
}

/// Resume mode: the round in progress.
struct Storm {
    /// When the first connection of the round was dropped.
    start: Instant,
    /// When the last resume so far was answered.
    last: Option<Instant>,
    srv: Option<ProcSample>,
    gen_cpu: f64,
    /// Sessions dropped this round.
    total: usize,
    /// Resumed connections (101 received) not yet answered or ended.
    awaiting: usize,
}

/// A closed-loop sender's messages not yet delivered to every receiver.
#[derive(Default)]
struct SenderState {
    token: usize,
    seq: u64,
    /// (seq, receivers still to deliver to, send time in ns) from the oldest.
    inflight: VecDeque<(u64, u32, u64)>,
}

impl SenderState {
    fn ack(&mut self, seq: u64) {
        let Some(&(front, _, _)) = self.inflight.front() else {
            return;
        };
        if seq < front {
            return;
        }
        if let Some(e) = self.inflight.get_mut((seq - front) as usize) {
            if e.0 == seq {
                e.1 = e.1.saturating_sub(1);
            }
        }
        while self.inflight.front().is_some_and(|e| e.1 == 0) {
            self.inflight.pop_front();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening the planned connections.
    Connecting,
    /// Traffic flows; measuring between `warm_end` and `end`.
    Running,
    /// No new messages; waiting for what is in flight.
    Draining,
    /// Closing every connection.
    Closing,
}

#[derive(Default)]
struct Interval {
    opened: u64,
    sent: u64,
    delivered: u64,
    bytes: u64,
    cycles: u64,
}

struct Engine<'p> {
    plan: &'p Plan,
    poll: Poll,
    conns: Slab<Conn>,
    limits: Limits,
    epoch: Instant,
    phase: Phase,
    rng: crate::rng::Rng,
    // Connection bookkeeping.
    started_conns: usize,
    pending: usize,
    open: u64,
    next_source: usize,
    first_connect: Option<Instant>,
    all_up: Option<Instant>,
    last_progress: Instant,
    next_id: u32,
    // Timeline (nanoseconds since epoch for comparisons with payload stamps).
    run_start: Option<Instant>,
    warm_end: Option<Instant>,
    end: Option<Instant>,
    phase_deadline: Option<Instant>,
    next_send: Option<Instant>,
    rr: usize,
    senders: Vec<SenderState>,
    dirty: Vec<usize>,
    // Counters.
    res: LoadResult,
    hist: Histogram<u64>,
    ihist: Histogram<u64>,
    interval: Interval,
    measured: Interval,
    text: String,
    echo_payload: Vec<u8>,
    // CPU samples.
    gen_cpu_start: f64,
    gen_cpu_end: f64,
    srv_start: Option<ProcSample>,
    srv_measure_start: Option<ProcSample>,
    srv_measure_end: Option<ProcSample>,
    read_buf: Vec<u8>,
    measure_started: bool,
    /// `--compression`: one compressor and one inflater for every connection.
    deflater: Deflater,
    inflater: Inflater,
    /// The server answered an offer without the extension (warned once).
    deflate_declined: bool,
    // Resume mode.
    slots: Vec<Slot>,
    resume_queue: Vec<u32>,
    storm: Option<Storm>,
    round: u32,
    storm_secs: f64,
    storm_srv_cpu: f64,
    storm_gen_cpu: f64,
    srv_up: Option<ProcSample>,
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits; values beyond saturate.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

/// Run the plan to completion.
pub(super) fn run(plan: &Plan) -> io::Result<LoadResult> {
    let now = Instant::now();
    let mut e = Engine {
        plan,
        poll: Poll::new()?,
        conns: Slab::with_capacity(plan.max_open()),
        limits: Limits {
            max_frame: 64 << 20,
            max_message: 64 << 20,
        },
        epoch: now,
        phase: Phase::Connecting,
        rng: crate::rng::Rng::from_entropy(),
        started_conns: 0,
        pending: 0,
        open: 0,
        next_source: 0,
        first_connect: None,
        all_up: None,
        last_progress: now,
        next_id: 0,
        run_start: None,
        warm_end: None,
        end: None,
        phase_deadline: None,
        next_send: None,
        rr: 0,
        senders: Vec::new(),
        dirty: Vec::new(),
        res: LoadResult {
            mode: format!("{:?}", plan.mode).to_lowercase(),
            protocol: format!("{:?}", plan.protocol).to_lowercase(),
            url: plan.url.clone(),
            target_connections: plan.max_open(),
            ..LoadResult::default()
        },
        hist: hist(),
        ihist: hist(),
        interval: Interval::default(),
        measured: Interval::default(),
        text: String::new(),
        echo_payload: vec![b'x'; plan.size],
        gen_cpu_start: 0.0,
        gen_cpu_end: 0.0,
        srv_start: None,
        srv_measure_start: None,
        srv_measure_end: None,
        read_buf: Vec::new(),
        measure_started: false,
        deflater: Deflater::new(),
        inflater: Inflater::new(),
        deflate_declined: false,
        slots: if plan.mode == Mode::Resume {
            vec![Slot::default(); plan.receivers]
        } else {
            Vec::new()
        },
        resume_queue: Vec::new(),
        storm: None,
        round: 0,
        storm_secs: 0.0,
        storm_srv_cpu: 0.0,
        storm_gen_cpu: 0.0,
        srv_up: None,
    };
    e.srv_start = e.server_sample();
    e.main_loop()?;
    Ok(e.finish())
}

impl Engine<'_> {
    fn server_sample(&self) -> Option<ProcSample> {
        self.plan.args.server_pid.and_then(sys::proc_sample)
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.mask()
    }

    fn planned(&self) -> usize {
        self.plan.max_open()
    }

    fn measuring(&self, now: Instant) -> bool {
        matches!((self.warm_end, self.end), (Some(w), Some(e)) if now >= w && now < e)
    }

    fn main_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_report = Instant::now() + Duration::from_secs(1);
        let start = Instant::now();
        loop {
            self.open_more()?;
            let now = Instant::now();
            // A phase may end at once (idle has nothing to drain): step until it holds.
            loop {
                let before = self.phase;
                if self.step_phase(now)? {
                    return Ok(());
                }
                if self.phase == before {
                    break;
                }
            }
            // A phase that just began may have connections to start (a resume round).
            self.open_more()?;
            self.send_due(Instant::now());
            self.flush_dirty();
            let mut wake = next_report;
            for t in [self.next_send, self.phase_deadline, self.end, self.warm_end]
                .into_iter()
                .flatten()
            {
                if t > now {
                    wake = wake.min(t);
                }
            }
            if self.next_send.is_some_and(|t| t <= now) {
                wake = now;
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                let token = ev.token().0;
                if !self.conns.contains(token) {
                    continue;
                }
                if ev.is_writable() {
                    self.on_writable(token);
                }
                if self.conns.contains(token)
                    && (ev.is_readable() || ev.is_read_closed() || ev.is_error())
                {
                    self.on_readable(token);
                }
            }
            let now = Instant::now();
            if now >= next_report {
                self.progress(now.duration_since(start));
                next_report += Duration::from_secs(1);
                if next_report <= now {
                    next_report = now + Duration::from_secs(1);
                }
            }
        }
    }

    /// Advance the run through its phases; true when everything is done.
    fn step_phase(&mut self, now: Instant) -> io::Result<bool> {
        let plan = self.plan;
        match self.phase {
            Phase::Connecting => {
                if plan.mode == Mode::Churn {
                    // Churn measures connecting itself: the slots fill while running.
                    self.start_running(now);
                    return Ok(false);
                }
                let done = self.started_conns >= self.planned() && self.pending == 0;
                // Counting is O(connections): only once every handshake is over.
                let all_ready = done
                    && self.conns.iter().filter(|(_, c)| c.ready).count() == self.open as usize;
                let stalled = now.duration_since(self.last_progress) > plan.args.timeout;
                if all_ready || stalled {
                    if self.all_up.is_none() {
                        self.all_up = Some(now);
                    }
                    if plan.protocol == Protocol::Plain
                        && matches!(plan.mode, Mode::Broadcast | Mode::Latency)
                        && now.duration_since(self.all_up.unwrap_or(now)) < PLAIN_SETTLE
                    {
                        self.phase_deadline = Some(self.all_up.unwrap_or(now) + PLAIN_SETTLE);
                        return Ok(false);
                    }
                    if self.open == 0 {
                        self.phase = Phase::Closing;
                        self.phase_deadline = Some(now);
                        return Ok(true);
                    }
                    self.start_running(now);
                }
                Ok(false)
            }
            Phase::Running if plan.mode == Mode::Resume => {
                self.step_storm(now);
                Ok(false)
            }
            Phase::Running => {
                if self.measuring(now) && !self.measure_started {
                    self.measure_started = true;
                    self.srv_measure_start = self.server_sample();
                    self.gen_cpu_start = sys::self_cpu_secs();
                }
                if self.end.is_some_and(|e| now >= e) {
                    self.srv_measure_end = self.server_sample();
                    self.gen_cpu_end = sys::self_cpu_secs();
                    if !self.measure_started {
                        self.measure_started = true;
                        self.gen_cpu_start = self.gen_cpu_end;
                        self.srv_measure_start = self.srv_measure_end;
                    }
                    self.phase = Phase::Draining;
                    self.next_send = None;
                    self.phase_deadline = Some(now + plan.args.timeout);
                }
                self.expire_stalled(now);
                Ok(false)
            }
            Phase::Draining => {
                let drained = match plan.mode {
                    Mode::Broadcast | Mode::Latency => {
                        self.res.delivered >= self.res.sent * plan.receivers as u64
                            || self.senders.iter().all(|s| s.inflight.is_empty())
                                && plan.rate.is_none()
                    }
                    Mode::Churn => self.conns.is_empty(),
                    Mode::Echo => self.res.delivered >= self.res.sent,
                    Mode::Idle | Mode::Resume => true,
                };
                if drained || self.phase_deadline.is_some_and(|d| now >= d) {
                    self.begin_close(now);
                }
                Ok(false)
            }
            Phase::Closing => {
                Ok(self.conns.is_empty() || self.phase_deadline.is_some_and(|d| now >= d))
            }
        }
    }

    fn start_running(&mut self, now: Instant) {
        let plan = self.plan;
        self.phase = Phase::Running;
        self.phase_deadline = None;
        self.run_start = Some(now);
        self.warm_end = Some(now + plan.args.warmup);
        self.end = Some(now + plan.args.warmup + plan.args.duration);
        self.res.up_peak = self.res.up_peak.max(self.open);
        if let (Some(first), Some(up)) = (self.first_connect, self.all_up) {
            self.res.connect_secs = up.duration_since(first).as_secs_f64();
            if self.res.connect_secs > 0.0 {
                self.res.connect_rate = self.open as f64 / self.res.connect_secs;
            }
        }
        if let Some(s) = self.server_sample() {
            self.res
                .server
                .get_or_insert_with(ServerStats::default)
                .rss_up = s.rss_bytes;
        }
        if plan.mode == Mode::Resume {
            self.srv_up = self.server_sample();
            self.warm_end = None;
            self.end = None;
            self.begin_storm(now);
            return;
        }
        if plan.rate.is_some() {
            self.next_send = Some(now);
        }
        // Closed-loop senders and echo connections start right away.
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for t in tokens {
            self.kick(t, now);
        }
    }

    /// Start (or continue) closed-loop traffic on connection `t`.
    fn kick(&mut self, t: usize, now: Instant) {
        let plan = self.plan;
        let Some(c) = self.conns.get(t) else { return };
        if c.state != State::Open || !c.ready {
            return;
        }
        match c.kind {
            Kind::Sender(i) if plan.rate.is_none() && self.phase == Phase::Running => {
                let free = plan
                    .window
                    .saturating_sub(self.senders[i as usize].inflight.len());
                for _ in 0..free {
                    self.send_msg(i as usize, now);
                }
            }
            Kind::Echo if self.phase == Phase::Running => {
                for _ in 0..plan.window {
                    self.send_echo(t, now);
                }
            }
            _ => {}
        }
    }

    /// Open-loop sends that are due.
    fn send_due(&mut self, now: Instant) {
        let (Some(rate), Some(mut next)) = (self.plan.rate, self.next_send) else {
            return;
        };
        if self.phase != Phase::Running || self.senders.is_empty() {
            return;
        }
        let step = Duration::from_secs_f64(1.0 / rate);
        let mut budget = 100_000;
        while next <= now && budget > 0 {
            let i = self.rr % self.senders.len();
            self.rr += 1;
            self.send_msg(i, now);
            next += step;
            budget -= 1;
        }
        self.next_send = Some(next);
    }

    fn send_msg(&mut self, i: usize, now: Instant) {
        let plan = self.plan;
        let nanos = self.nanos(now);
        let mask = self.mask();
        let s = &mut self.senders[i];
        let Some(c) = self.conns.get_mut(s.token) else {
            return;
        };
        if c.state != State::Open {
            return;
        }
        s.seq += 1;
        if plan.rate.is_none() {
            s.inflight.push_back((s.seq, plan.receivers as u32, nanos));
        }
        self.text.clear();
        write_payload(&mut self.text, i as u32, s.seq, nanos, plan.size);
        // Compressed whenever negotiated (`--compression`), whatever the size.
        c.ws.send(
            &mut c.wbuf,
            OpCode::Text,
            self.text.as_bytes(),
            Some(&mut self.deflater),
            0,
            Some(mask),
        );
        mark_dirty(&mut self.dirty, c, s.token);
        self.res.sent += 1;
        self.interval.sent += 1;
        if self.measuring(now) {
            self.measured.sent += 1;
        }
    }

    fn send_echo(&mut self, t: usize, now: Instant) {
        let nanos = self.nanos(now);
        let mask = self.mask();
        let Some(c) = self.conns.get_mut(t) else {
            return;
        };
        self.echo_payload[..8].copy_from_slice(&nanos.to_le_bytes());
        c.ws.send(
            &mut c.wbuf,
            OpCode::Binary,
            &self.echo_payload,
            Some(&mut self.deflater),
            0,
            Some(mask),
        );
        mark_dirty(&mut self.dirty, c, t);
        self.res.sent += 1;
        self.interval.sent += 1;
        if self.measuring(now) {
            self.measured.sent += 1;
        }
    }

    /// Closed loop: give up on messages older than the timeout so one lost
    /// delivery cannot stall a sender forever.
    fn expire_stalled(&mut self, now: Instant) {
        if self.plan.rate.is_some() {
            return;
        }
        let limit = self
            .nanos(now)
            .saturating_sub(self.plan.args.timeout.as_nanos() as u64);
        let mut expired = Vec::new();
        for (i, s) in self.senders.iter_mut().enumerate() {
            let before = s.inflight.len();
            while s.inflight.front().is_some_and(|e| e.2 < limit) {
                s.inflight.pop_front();
            }
            if s.inflight.len() != before {
                self.res.timed_out += (before - s.inflight.len()) as u64;
                expired.push(i);
            }
        }
        for i in expired {
            let t = self.senders[i].token;
            self.kick(t, now);
        }
    }

    /// Start connections while the plan wants more and the concurrency allows.
    fn open_more(&mut self) -> io::Result<()> {
        let plan = self.plan;
        if plan.mode == Mode::Resume && self.phase == Phase::Running {
            let limit = plan.args.concurrency.max(1);
            while self.pending < limit {
                let Some(i) = self.resume_queue.pop() else {
                    break;
                };
                let Some(slot) = self.slots.get(i as usize) else {
                    continue;
                };
                if plan.args.fresh {
                    self.connect_to(Kind::Session(i), None)?;
                } else {
                    let target = format!("{}?resume={}", plan.path, slot.token);
                    self.connect_to(Kind::Session(i), Some(&target))?;
                }
            }
            return Ok(());
        }
        let want_more = match self.phase {
            Phase::Connecting => self.started_conns < self.planned(),
            Phase::Running => plan.mode == Mode::Churn,
            _ => false,
        };
        if !want_more {
            return Ok(());
        }
        let limit = if plan.mode == Mode::Churn {
            plan.receivers
        } else {
            plan.args.concurrency.max(1)
        };
        while self.pending < limit
            && (self.phase == Phase::Running || self.started_conns < self.planned())
            && (plan.mode != Mode::Churn || self.conns.len() < plan.receivers)
        {
            let kind = match plan.mode {
                Mode::Idle => Kind::Idle,
                Mode::Echo => Kind::Echo,
                Mode::Resume => Kind::Session(self.started_conns as u32),
                Mode::Churn => {
                    self.next_id = self.next_id.wrapping_add(1);
                    Kind::Churn(self.next_id)
                }
                Mode::Broadcast | Mode::Latency => {
                    if self.started_conns < plan.receivers {
                        Kind::Receiver
                    } else {
                        Kind::Sender((self.started_conns - plan.receivers) as u32)
                    }
                }
            };
            self.started_conns += 1;
            self.connect(kind)?;
        }
        Ok(())
    }

    fn connect(&mut self, kind: Kind) -> io::Result<()> {
        self.connect_to(kind, None)
    }

    /// Start a connection to the plan's target, or to `target` (path and query).
    fn connect_to(&mut self, kind: Kind, target: Option<&str>) -> io::Result<()> {
        let plan = self.plan;
        let now = Instant::now();
        self.first_connect.get_or_insert(now);
        let source = if plan.sources.is_empty() {
            None
        } else {
            self.next_source = (self.next_source + 1) % plan.sources.len();
            Some(plan.sources[self.next_source])
        };
        let mut sock = match sys::connect(plan.addr, source) {
            Ok(s) => s,
            Err(e) => {
                self.res.connect_errors += 1;
                if self.res.connect_errors <= 3 && !plan.args.quiet {
                    eprintln!("loopchat load: connect {}: {e}", plan.addr);
                }
                return Ok(());
            }
        };
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(
            &mut sock,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = generate_key();
        let mut wbuf = Vec::new();
        let offer = plan.args.compression.then_some(CLIENT_OFFER);
        let target = target.unwrap_or(&plan.target);
        write_client_request_ext(&mut wbuf, &plan.authority, target, &key, None, offer);
        entry.insert(Conn {
            sock,
            kind,
            state: State::Connecting,
            key,
            head: Vec::new(),
            ws: Endpoint::new(Role::Client),
            wbuf,
            ready: false,
            blocked: true,
            dirty: false,
            started: now,
            done: false,
            msgs_left: 0,
        });
        if let Kind::Sender(i) = kind {
            let i = i as usize;
            if self.senders.len() <= i {
                self.senders.resize_with(i + 1, SenderState::default);
            }
            self.senders[i].token = token;
        }
        self.pending += 1;
        Ok(())
    }

    fn on_writable(&mut self, t: usize) {
        let c = &mut self.conns[t];
        if c.state == State::Connecting {
            match c.sock.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => {
                    self.res.connect_errors += 1;
                    self.remove(t);
                    return;
                }
            }
            match c.sock.peer_addr() {
                Ok(_) => {
                    let _ = c.sock.set_nodelay(true);
                    c.state = State::Handshake;
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(_) => {
                    self.res.connect_errors += 1;
                    self.remove(t);
                    return;
                }
            }
        }
        c.blocked = false;
        self.flush(t);
    }

    /// Write what the connection has queued; on WouldBlock wait for the writable event.
    fn flush(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(t) else {
            return;
        };
        c.dirty = false;
        if c.blocked || c.state == State::Connecting {
            return;
        }
        let mut written = 0;
        let mut failed = false;
        while written < c.wbuf.len() {
            match c.sock.write(&c.wbuf[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.blocked = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        if c.wbuf.is_empty() && c.wbuf.capacity() > 64 * 1024 {
            c.wbuf = Vec::new();
        }
        if failed {
            self.lost(t, "error");
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &t in &dirty {
            self.flush(t);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn on_readable(&mut self, t: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        if buf.is_empty() {
            buf = vec![0u8; READ_BUF];
        }
        while let Some(c) = self.conns.get_mut(t) {
            if c.state == State::Connecting {
                // Readable before writable: a refused connect reports an error here.
                if let Ok(Some(_)) = c.sock.take_error() {
                    self.res.connect_errors += 1;
                    self.remove(t);
                }
                break;
            }
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    self.on_eof(t);
                    break;
                }
                Ok(n) => {
                    if !self.on_bytes(t, &mut buf[..n]) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lost(t, "error");
                    break;
                }
            }
        }
        self.read_buf = buf;
    }

    /// Handle bytes read; false when the connection is gone.
    fn on_bytes(&mut self, t: usize, data: &mut [u8]) -> bool {
        let c = &mut self.conns[t];
        if c.state == State::Handshake || c.state == State::Connecting {
            c.head.extend_from_slice(data);
            let offered = self.plan.args.compression;
            match parse_response_ext(&c.head, &c.key, MAX_HEAD, offered) {
                Ok(Status::Partial) => return true,
                Ok(Status::Complete((101, len, deflate))) => {
                    c.ws = Endpoint::with_deflate(Role::Client, deflate);
                    if offered && deflate.is_none() && !self.deflate_declined {
                        self.deflate_declined = true;
                        if !self.plan.args.quiet {
                            eprintln!("loopchat load: the server declined permessage-deflate");
                        }
                    }
                    let mut rest = c.head.split_off(len);
                    c.head = Vec::new();
                    c.key = String::new();
                    c.state = State::Open;
                    c.ready = self.plan.protocol == Protocol::Plain || self.plan.mode == Mode::Echo;
                    if let (Kind::Session(_), Some(st)) = (c.kind, self.storm.as_mut()) {
                        st.awaiting += 1;
                    }
                    self.pending = self.pending.saturating_sub(1);
                    self.open += 1;
                    self.res.opened += 1;
                    self.res.up_peak = self.res.up_peak.max(self.open);
                    self.interval.opened += 1;
                    self.last_progress = Instant::now();
                    let ready = c.ready;
                    if ready {
                        self.on_ready(t);
                    }
                    if rest.is_empty() {
                        return true;
                    }
                    return self.on_frames(t, &mut rest);
                }
                Ok(Status::Complete(_)) | Err(_) => {
                    self.res.handshake_failures += 1;
                    self.remove(t);
                    return false;
                }
            }
        }
        self.on_frames(t, data)
    }

    fn on_ready(&mut self, t: usize) {
        let now = Instant::now();
        let Some(c) = self.conns.get(t) else { return };
        match c.kind {
            Kind::Churn(id) => {
                let mask = self.mask();
                let nanos = self.nanos(now);
                self.text.clear();
                write_payload(&mut self.text, id, 0, nanos, self.plan.size);
                let c = &mut self.conns[t];
                encode_frame(
                    &mut c.wbuf,
                    OpCode::Text,
                    true,
                    self.text.as_bytes(),
                    Some(mask),
                );
                mark_dirty(&mut self.dirty, c, t);
            }
            _ if self.phase == Phase::Running => self.kick(t, now),
            _ => {}
        }
    }

    /// Parse frames; false when the connection is gone.
    fn on_frames(&mut self, t: usize, data: &mut [u8]) -> bool {
        let plan = self.plan;
        let plain = plan.protocol == Protocol::Plain;
        let now = Instant::now();
        let now_ns = self.nanos(now);
        let measuring = self.measuring(now);
        let warm_ns = self.warm_end.map(|w| self.nanos(w)).unwrap_or(u64::MAX);
        let end_ns = self.end.map(|w| self.nanos(w)).unwrap_or(u64::MAX);
        let mut became_ready = false;
        let mut echoes = 0u32;
        let mut acked: Vec<usize> = Vec::new();
        let mut outcome: Option<&'static str> = None;
        let mut close_code: Option<String> = None;
        let mut churn_done = false;
        let mut resumed = false;
        let mut bad_session = false;
        let taking = self.phase == Phase::Connecting;
        let fresh = plan.args.fresh;
        {
            let Engine {
                conns,
                res,
                hist,
                ihist,
                interval,
                measured,
                senders,
                rng,
                dirty,
                inflater,
                slots,
                ..
            } = self;
            let c = &mut conns[t];
            let kind = c.kind;
            let mut off = 0;
            while off < data.len() {
                let mask = rng.mask();
                let was_open = c.ws.state() == CloseState::Open;
                let queued = c.wbuf.len();
                let Conn {
                    ws,
                    wbuf,
                    msgs_left,
                    ..
                } = &mut *c;
                // Pongs, the close answer and the close for a protocol error
                // are written into `wbuf` by the endpoint.
                let read = ws.read(
                    &mut data[off..],
                    &self.limits,
                    Some(&mut *inflater),
                    wbuf,
                    Some(mask),
                );
                let replied = wbuf.len() > queued;
                match read {
                    Ok((used, msg)) => {
                        off += used;
                        match msg {
                            Some(Message::Text(text)) => {
                                for line in text.split('\n') {
                                    match classify(line, plain) {
                                        Line::Payload(_)
                                            if matches!(kind, Kind::Session(_))
                                                && *msgs_left > 0 =>
                                        {
                                            *msgs_left -= 1;
                                            resumed |= *msgs_left == 0;
                                        }
                                        Line::Payload(p) => {
                                            let Some(st) = parse_payload(p) else {
                                                continue;
                                            };
                                            match kind {
                                                Kind::Receiver => {
                                                    res.delivered += 1;
                                                    interval.delivered += 1;
                                                    if measuring {
                                                        measured.delivered += 1;
                                                    }
                                                    let lat =
                                                        now_ns.saturating_sub(st.nanos) / 1000;
                                                    ihist.saturating_record(lat.max(1));
                                                    if st.nanos >= warm_ns && st.nanos < end_ns {
                                                        hist.saturating_record(lat.max(1));
                                                    }
                                                    if plan.rate.is_none() {
                                                        if let Some(s) =
                                                            senders.get_mut(st.sender as usize)
                                                        {
                                                            let before = s.inflight.len();
                                                            s.ack(st.seq);
                                                            if s.inflight.len() < before {
                                                                acked.push(st.sender as usize);
                                                            }
                                                        }
                                                    }
                                                }
                                                Kind::Churn(id) if id == st.sender => {
                                                    churn_done = true;
                                                }
                                                _ => {}
                                            }
                                        }
                                        Line::Joined
                                            if fresh
                                                && !taking
                                                && matches!(kind, Kind::Session(_)) =>
                                        {
                                            // The baseline's answer: the new connection is in its room.
                                            resumed = true;
                                        }
                                        Line::Joined => {
                                            if let Kind::Session(i) = kind {
                                                if let Some(s) = slots.get_mut(i as usize) {
                                                    s.joined |= taking;
                                                }
                                            } else {
                                                became_ready = true;
                                            }
                                        }
                                        Line::Session(token) => {
                                            if let Kind::Session(i) = kind {
                                                if let Some(s) = slots.get_mut(i as usize) {
                                                    s.token.clear();
                                                    s.token.push_str(token);
                                                }
                                            }
                                        }
                                        Line::Resumed(count) => {
                                            if matches!(kind, Kind::Session(_)) && !taking {
                                                *msgs_left = count.unwrap_or(0);
                                                resumed |= *msgs_left == 0;
                                            }
                                        }
                                        Line::Caps(list) if taking => {
                                            if let Kind::Session(i) = kind {
                                                if let Some(s) = slots.get_mut(i as usize) {
                                                    s.unoffered =
                                                        !list.split(',').any(|c| c == "resume");
                                                }
                                            }
                                        }
                                        Line::Err(ErrorCode::BadSession) => {
                                            bad_session = true;
                                        }
                                        Line::Err(code) => {
                                            res.server_errors += 1;
                                            if code == ErrorCode::RateLimited {
                                                res.rate_limited += 1;
                                            }
                                        }
                                        Line::Caps(_) | Line::Other => {}
                                    }
                                }
                            }
                            Some(Message::Binary(b)) if kind == Kind::Echo => {
                                if let Some(stamp) = b.get(..8) {
                                    let mut n = [0u8; 8];
                                    n.copy_from_slice(stamp);
                                    let sent = u64::from_le_bytes(n);
                                    let lat = now_ns.saturating_sub(sent) / 1000;
                                    ihist.saturating_record(lat.max(1));
                                    if sent >= warm_ns && sent < end_ns {
                                        hist.saturating_record(lat.max(1));
                                    }
                                }
                                res.delivered += 1;
                                interval.bytes += b.len() as u64;
                                interval.delivered += 1;
                                if measuring {
                                    measured.bytes += b.len() as u64;
                                    measured.delivered += 1;
                                }
                                echoes += 1;
                            }
                            Some(Message::Binary(_)) => {}
                            Some(Message::Ping(_)) if replied => mark_dirty(dirty, c, t),
                            Some(Message::Ping(_) | Message::Pong(_)) => {}
                            Some(Message::Close { code, .. }) => {
                                if !was_open {
                                    outcome = Some("closed");
                                } else {
                                    close_code =
                                        Some(code.map_or("1005".to_string(), |c| c.to_string()));
                                    c.state = State::Closing;
                                    mark_dirty(dirty, c, t);
                                }
                                break;
                            }
                            None if used == 0 => break,
                            None => {}
                        }
                    }
                    Err(_) => {
                        outcome = Some("protocol-error");
                        break;
                    }
                }
            }
            // Taking a session: ready once in the room with a token.
            if let (Kind::Session(i), true) = (kind, taking) {
                became_ready |= slots
                    .get(i as usize)
                    .is_some_and(|s| s.joined && (fresh || s.unoffered || !s.token.is_empty()));
            }
        }
        if let Some(code) = close_code {
            // The server ended this connection: count it, answer, and let the EOF remove it.
            self.storm_gone(t);
            *self.res.closes.entry(code).or_insert(0) += 1;
            self.open = self.open.saturating_sub(1);
            if let Some(c) = self.conns.get_mut(t) {
                c.ready = false;
            }
            self.flush(t);
            return self.conns.contains(t);
        }
        match outcome {
            Some("closed") => {
                // Our close was answered: the server closes the TCP connection next.
                return true;
            }
            Some(why) => {
                self.flush(t);
                self.lost(t, why);
                return false;
            }
            None => {}
        }
        if became_ready {
            if let Some(c) = self.conns.get_mut(t) {
                if !c.ready {
                    c.ready = true;
                    self.on_ready(t);
                }
            }
        }
        if churn_done {
            self.finish_churn(t, now);
        }
        if bad_session {
            self.resume_refused(t);
            return false;
        }
        if resumed {
            self.resume_answered(t, now);
        }
        if echoes > 0 && self.phase == Phase::Running {
            for _ in 0..echoes {
                self.send_echo(t, now);
            }
        }
        if !acked.is_empty() && self.phase == Phase::Running {
            acked.sort_unstable();
            acked.dedup();
            for i in acked {
                let tok = self.senders[i].token;
                self.kick(tok, now);
            }
        }
        true
    }

    /// Resume mode: drop every connection at once (the sockets closed, no
    /// close frame) and queue the resume of every session that was taken (or
    /// resumed in the last round).
    fn begin_storm(&mut self, now: Instant) {
        self.round += 1;
        let srv = self.server_sample();
        let gen_cpu = sys::self_cpu_secs();
        let prev = self.round - 1;
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        let mut queue = Vec::with_capacity(tokens.len());
        for t in tokens {
            if let Some(c) = self.conns.get(t) {
                if let Kind::Session(i) = c.kind {
                    let ok = c.ready
                        && self.slots.get(i as usize).is_some_and(|s| {
                            s.round == prev && (self.plan.args.fresh || !s.token.is_empty())
                        });
                    if ok {
                        queue.push(i);
                    } else if c.ready && prev == 0 && !self.plan.args.fresh {
                        self.res.no_session += 1;
                    }
                }
            }
            // Dropping the stream closes the socket: the server sees the
            // connection end without a close frame, as after a network drop.
            self.remove(t);
        }
        self.open = 0;
        // Resumed in slot order, as the sessions were taken.
        queue.sort_unstable_by(|a, b| b.cmp(a));
        self.res.resume_expected += queue.len() as u64;
        self.storm = Some(Storm {
            start: now,
            last: None,
            srv,
            gen_cpu,
            total: queue.len(),
            awaiting: 0,
        });
        self.resume_queue = queue;
        self.last_progress = now;
    }

    /// Resume mode: end the round when every resume was answered (or failed)
    /// or nothing moved for `--timeout`; then the next round, or the end.
    fn step_storm(&mut self, now: Instant) {
        let Some(st) = &self.storm else { return };
        let finished = self.resume_queue.is_empty() && self.pending == 0 && st.awaiting == 0;
        let stalled = now.duration_since(self.last_progress) > self.plan.args.timeout;
        if !finished && !stalled {
            return;
        }
        let Some(st) = self.storm.take() else { return };
        let end = st.last.filter(|_| finished).unwrap_or(now);
        let wall = end.duration_since(st.start).as_secs_f64();
        self.storm_secs += wall;
        self.storm_gen_cpu += sys::self_cpu_secs() - st.gen_cpu;
        if let (Some(a), Some(b)) = (st.srv, self.server_sample()) {
            self.storm_srv_cpu += b.cpu_secs - a.cpu_secs;
        }
        let round = self.round;
        let done = self.slots.iter().filter(|s| s.round == round).count();
        if !self.plan.args.quiet {
            eprintln!(
                "round {round}: {done} of {} {} in {:.3}s ({:.0}/s){}",
                st.total,
                if self.plan.args.fresh {
                    "connections reconnected"
                } else {
                    "sessions resumed"
                },
                wall,
                done as f64 / wall.max(1e-9),
                if stalled && !finished {
                    " - stalled"
                } else {
                    ""
                }
            );
        }
        if stalled && !finished {
            self.res.timed_out += st.awaiting as u64 + self.resume_queue.len() as u64;
            self.resume_queue.clear();
        }
        if finished && round < self.plan.args.rounds && done > 0 {
            self.begin_storm(now);
        } else {
            self.phase = Phase::Draining;
            self.phase_deadline = Some(now);
        }
    }

    /// Resume mode: connection `t` got its whole answer (`WELCOME`,
    /// `SESSION`, `RESUMED` and the missed `MSG` lines).
    fn resume_answered(&mut self, t: usize, now: Instant) {
        let round = self.round;
        let Some(c) = self.conns.get_mut(t) else {
            return;
        };
        if c.done || self.storm.is_none() {
            return;
        }
        c.done = true;
        c.ready = true;
        let us = now.duration_since(c.started).as_micros() as u64;
        if let Kind::Session(i) = c.kind {
            if let Some(s) = self.slots.get_mut(i as usize) {
                s.round = round;
            }
        }
        self.hist.saturating_record(us.max(1));
        self.ihist.saturating_record(us.max(1));
        self.interval.cycles += 1;
        self.res.resumed += 1;
        self.last_progress = now;
        if let Some(st) = self.storm.as_mut() {
            st.awaiting = st.awaiting.saturating_sub(1);
            st.last = Some(now);
        }
    }

    /// Resume mode: the server refused a token (`ERR bad-session`); the
    /// connection (now a guest) is dropped.
    fn resume_refused(&mut self, t: usize) {
        self.res.resume_failures += 1;
        self.storm_gone(t);
        if self.conns.get(t).is_some_and(|c| c.state == State::Open) {
            self.open = self.open.saturating_sub(1);
        }
        self.remove(t);
    }

    /// Resume mode: connection `t` ends or fails before its answer; the
    /// round stops waiting for it.
    fn storm_gone(&mut self, t: usize) {
        let Some(c) = self.conns.get_mut(t) else {
            return;
        };
        if !matches!(c.kind, Kind::Session(_)) || c.done || c.state != State::Open {
            return;
        }
        c.done = true;
        if let Some(st) = self.storm.as_mut() {
            st.awaiting = st.awaiting.saturating_sub(1);
            self.last_progress = Instant::now();
        }
    }

    fn finish_churn(&mut self, t: usize, now: Instant) {
        let mask = self.mask();
        let Some(c) = self.conns.get_mut(t) else {
            return;
        };
        if c.done {
            return;
        }
        c.done = true;
        let cycle_us = now.duration_since(c.started).as_micros() as u64;
        c.ws.close(&mut c.wbuf, Some(1000), "", Some(mask));
        c.state = State::Closing;
        mark_dirty(&mut self.dirty, c, t);
        self.open = self.open.saturating_sub(1);
        self.interval.cycles += 1;
        if self.measuring(now) {
            self.measured.cycles += 1;
            self.hist.saturating_record(cycle_us.max(1));
        }
        self.ihist.saturating_record(cycle_us.max(1));
    }

    fn on_eof(&mut self, t: usize) {
        let Some(c) = self.conns.get(t) else { return };
        match c.state {
            State::Closing => self.remove(t),
            State::Open => self.lost(t, "eof"),
            State::Connecting | State::Handshake => {
                self.res.handshake_failures += 1;
                self.remove(t);
            }
        }
    }

    /// A connection ended without our asking.
    fn lost(&mut self, t: usize, why: &str) {
        self.storm_gone(t);
        let Some(c) = self.conns.get(t) else { return };
        match c.state {
            State::Open => {
                *self.res.closes.entry(why.to_string()).or_insert(0) += 1;
                self.open = self.open.saturating_sub(1);
            }
            State::Connecting => self.res.connect_errors += 1,
            State::Handshake => self.res.handshake_failures += 1,
            State::Closing => {}
        }
        self.remove(t);
    }

    /// Drop connection `t` (closing its socket); a connect or handshake in
    /// progress gives its concurrency slot back.
    fn remove(&mut self, t: usize) {
        if let Some(mut c) = self.conns.try_remove(t) {
            if matches!(c.state, State::Connecting | State::Handshake) {
                self.pending = self.pending.saturating_sub(1);
                self.last_progress = Instant::now();
            }
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
    }

    /// Send a close to every open connection and wait for the answers.
    fn begin_close(&mut self, now: Instant) {
        self.phase = Phase::Closing;
        self.phase_deadline = Some(now + CLOSE_WAIT);
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for t in tokens {
            let mask = self.mask();
            let c = &mut self.conns[t];
            match c.state {
                State::Open => {
                    c.ws.close(&mut c.wbuf, Some(1000), "", Some(mask));
                    c.state = State::Closing;
                    mark_dirty(&mut self.dirty, c, t);
                }
                State::Closing => {}
                State::Connecting | State::Handshake => self.remove(t),
            }
        }
        self.res.server.get_or_insert_with(ServerStats::default);
        if let Some(s) = self.server_sample() {
            if let Some(v) = self.res.server.as_mut() {
                v.rss_end = s.rss_bytes;
            }
        }
    }

    fn progress(&mut self, elapsed: Duration) {
        let iv = std::mem::take(&mut self.interval);
        let lat = Latency::from_hist(&self.ihist);
        self.ihist.reset();
        self.res.timeline.push(Sample {
            t: elapsed.as_secs_f64(),
            open: self.open,
            sent: iv.sent,
            delivered: iv.delivered + iv.cycles,
            latency: lat,
        });
        if self.plan.args.quiet {
            return;
        }
        let mut line = format!(
            "[{:>5.1}s] {:?} up {}/{} (+{}/s) fail {}+{}",
            elapsed.as_secs_f64(),
            self.phase,
            self.open,
            self.planned(),
            iv.opened,
            self.res.connect_errors,
            self.res.handshake_failures
        );
        if iv.sent > 0 || iv.delivered > 0 {
            line.push_str(&format!(" | sent {}/s deliv {}/s", iv.sent, iv.delivered));
        }
        if iv.bytes > 0 {
            line.push_str(&format!(" {:.1} MB/s", iv.bytes as f64 / 1e6));
        }
        if iv.cycles > 0 && self.plan.mode == Mode::Resume {
            line.push_str(&format!(" | round {} resumed {}/s", self.round, iv.cycles));
        } else if iv.cycles > 0 {
            line.push_str(&format!(" cycles {}/s", iv.cycles));
        }
        if let Some(l) = lat {
            line.push_str(&format!(
                " | p50 {}us p99 {}us max {}us",
                l.p50, l.p99, l.max
            ));
        }
        let closed: u64 = self.res.closes.values().sum();
        if closed > 0 {
            line.push_str(&format!(" | closed by server {closed}"));
        }
        eprintln!("{line}");
    }

    fn finish(mut self) -> LoadResult {
        let plan = self.plan;
        let secs = plan.args.duration.as_secs_f64();
        let mut r = std::mem::take(&mut self.res);
        if r.connect_secs == 0.0 {
            if let (Some(first), Some(up)) = (self.first_connect, self.all_up) {
                r.connect_secs = up.duration_since(first).as_secs_f64();
                if r.connect_secs > 0.0 {
                    r.connect_rate = r.opened as f64 / r.connect_secs;
                }
            }
        }
        let measured = self.end.is_some();
        r.measure_secs = if measured { secs } else { 0.0 };
        if measured && secs > 0.0 {
            r.msgs_per_sec = self.measured.sent as f64 / secs;
            r.deliveries_per_sec = self.measured.delivered as f64 / secs;
            r.mb_per_sec = self.measured.bytes as f64 / 1e6 / secs;
            r.cycles_per_sec = self.measured.cycles as f64 / secs;
            r.gen_cpu_pct = (self.gen_cpu_end - self.gen_cpu_start) / secs * 100.0;
        }
        if matches!(plan.mode, Mode::Broadcast | Mode::Latency) {
            r.expected = r.sent * plan.receivers as u64;
        } else if plan.mode == Mode::Echo {
            r.expected = r.sent;
        }
        if plan.mode == Mode::Resume {
            r.rounds = self.round;
            r.fresh = plan.args.fresh;
            r.measure_secs = self.storm_secs;
            if self.storm_secs > 0.0 {
                r.resumes_per_sec = r.resumed as f64 / self.storm_secs;
                r.gen_cpu_pct = self.storm_gen_cpu / self.storm_secs * 100.0;
            }
        }
        r.latency = Latency::from_hist(&self.hist);
        r.hist = Some(self.hist.clone());
        if let Some(start) = self.srv_start {
            let mut v = r.server.unwrap_or_default();
            v.rss_start = start.rss_bytes;
            if v.rss_up == 0 {
                v.rss_up = start.rss_bytes;
            }
            if v.rss_end == 0 {
                v.rss_end = self.server_sample().map_or(0, |s| s.rss_bytes);
            }
            let conns = r.up_peak.max(1) as f64;
            v.rss_per_conn = (v.rss_up as f64 - v.rss_start as f64) / conns;
            if let (Some(a), Some(b)) = (self.srv_measure_start, self.srv_measure_end) {
                v.cpu_secs = b.cpu_secs - a.cpu_secs;
                if secs > 0.0 {
                    v.cpu_pct = v.cpu_secs / secs * 100.0;
                }
                if v.cpu_secs > 0.0 {
                    v.deliveries_per_cpu_sec = self.measured.delivered as f64 / v.cpu_secs;
                    if plan.mode == Mode::Churn {
                        v.deliveries_per_cpu_sec = self.measured.cycles as f64 / v.cpu_secs;
                    }
                }
            }
            if plan.mode == Mode::Resume {
                if let Some(up) = self.srv_up {
                    v.connect_cpu_secs = up.cpu_secs - start.cpu_secs;
                    if v.connect_cpu_secs > 0.0 {
                        v.connects_per_cpu_sec = r.up_peak as f64 / v.connect_cpu_secs;
                    }
                }
                v.cpu_secs = self.storm_srv_cpu;
                v.cpu_pct = 0.0;
                v.deliveries_per_cpu_sec = 0.0;
                if self.storm_secs > 0.0 {
                    v.cpu_pct = v.cpu_secs / self.storm_secs * 100.0;
                }
                if v.cpu_secs > 0.0 {
                    v.deliveries_per_cpu_sec = r.resumed as f64 / v.cpu_secs;
                }
            }
            r.server = Some(v);
        } else {
            r.server = None;
        }
        r
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, c: &mut Conn, t: usize) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(t);
    }
}
