//! `loopchat load`: a single-threaded mio load generator speaking the `ws`
//! client role (masked frames), for loopchat and for plain broadcast servers.
//!
//! Modes:
//! - `idle`: open and hold N connections; reports the connect rate, when all
//!   were up, and (with `--server-pid`) the server's RSS per connection.
//! - `broadcast`: C receivers and S senders in one room; closed loop (each
//!   sender keeps at most `--window` messages not yet delivered to every
//!   receiver) or open loop at `--rate` messages/s in total.
//! - `latency`: one sender at a fixed `--rate` (default 100/s), every delivery
//!   at every receiver timed.
//! - `churn`: N slots, each repeating connect, handshake, one message, close.
//! - `echo`: N connections to `/echo` sending `--size`-byte binary messages
//!   closed-loop; reports MB/s.
//! - `resume`: a resume storm. N connections with `?caps=resume` each take a
//!   session (`SESSION TOKEN`) in `--room`; then all are dropped at once (the
//!   sockets closed, no close frame) and N new connections resume them with
//!   `/ws?resume=TOKEN`, each timed from its connect to its `RESUMED` answer;
//!   `--rounds` repeats drop and resume with the fresh tokens.
//!
//! The loopchat server limits every connection to 50 commands/s by default:
//! start it with `--rate-limit 0` for load tests. In rooms larger than its
//! `--presence-limit` (100) JOINED/LEFT go only to the subject, so a big room
//! fills without O(N²) notices.
//!
//! Messages carry the sender, a sequence number and the send time (see
//! [`payload`]); receivers split every frame on `\n`, so servers that coalesce
//! several messages into one frame (gorilla's chat example does) count right.
//! Server pings are answered with pongs.

pub mod html;
pub mod payload;
pub mod ramp;
pub mod report;

mod engine;

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::client::WsUrl;
use crate::sys;

/// What the generator does (see the module documentation).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Open and hold N connections.
    Idle,
    /// C receivers and S senders in one room, closed or open loop.
    Broadcast,
    /// One sender at a fixed rate; every delivery timed.
    Latency,
    /// Connect, handshake, one message, close, repeat.
    Churn,
    /// Binary messages to /echo, closed loop; MB/s.
    Echo,
    /// Take N sessions, drop them all at once, resume them all at once.
    Resume,
}

/// The target's chat protocol.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// loopchat's `/ws`: join `--room` by URL, deliveries arrive as `MSG ROOM NICK TEXT`.
    Loopchat,
    /// A plain broadcast server: every text received goes to every client as is.
    Plain,
}

/// Flags of `loopchat load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// What to do.
    #[arg(long, short = 'm', value_enum, default_value = "broadcast")]
    pub mode: Mode,

    /// Target URL [default: ws://127.0.0.1:9000/ws, or .../echo in echo mode].
    #[arg(long)]
    pub url: Option<String>,

    /// The target's protocol: loopchat, or plain (broadcast every text as is).
    #[arg(long, value_enum, default_value = "loopchat")]
    pub protocol: Protocol,

    /// Connections for idle, echo and resume, concurrent slots for churn.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    pub connections: usize,

    /// Receivers (broadcast, latency).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 100)]
    pub receivers: usize,

    /// Senders (broadcast; latency always uses one).
    #[arg(long, short = 's', value_name = "N", default_value_t = 1)]
    pub senders: usize,

    /// Message size in bytes (text payload; binary for echo).
    #[arg(long, value_name = "BYTES", default_value_t = 32)]
    pub size: usize,

    /// Open loop: messages per second in total over all senders (latency: default 100).
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,

    /// Closed loop: messages per sender not yet delivered everywhere [default: 8, echo 1].
    #[arg(long, value_name = "N")]
    pub window: Option<usize>,

    /// Time after all connections are up before measuring.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub warmup: Duration,

    /// Measuring time (idle: holding time).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,

    /// Room to join (loopchat protocol).
    #[arg(long, default_value = "load")]
    pub room: String,

    /// Spread source addresses over 127.0.0.2 .. 127.0.0.(N+1) (0 = let the kernel choose).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub sources: u8,

    /// Connects and handshakes in progress at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub concurrency: usize,

    /// Give up waiting for connections, a stalled message, a resume round in
    /// which nothing moves, or the final drain after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,

    /// Report the CPU time and RSS of this process (the server) from /proc.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Offer permessage-deflate (both no_context_takeover parameters); when the
    /// server accepts, every message sent is compressed and compressed
    /// deliveries are inflated by one shared inflater.
    #[arg(long)]
    pub compression: bool,

    /// Resume mode: how many times to drop and resume every session.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: u32,

    /// Resume mode's baseline: the same storm with v1 connections (no
    /// `caps=resume`); each round drops them and connects N new ones, each
    /// timed until its `JOINED`.
    #[arg(long)]
    pub fresh: bool,

    /// Print one JSON object at the end instead of the text summary.
    #[arg(long)]
    pub json: bool,

    /// No per-second progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Step the load up, one measurement per step, until a step breaks `--slo`:
    /// `connections` (receivers, `-c`) or `rate` (messages/s in total, open
    /// loop). Broadcast and latency modes. Exits 1 when the first step fails.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub ramp: Option<ramp::RampWhat>,

    /// First value of the ramp.
    #[arg(long, value_name = "N", default_value_t = 100.0)]
    pub ramp_start: f64,

    /// Increment per step.
    #[arg(long, value_name = "N", default_value_t = 100.0)]
    pub ramp_step: f64,

    /// Last value tried.
    #[arg(long, value_name = "N", default_value_t = 1000.0)]
    pub ramp_limit: f64,

    /// Measuring time of each step (after `--warmup`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub step_duration: Duration,

    /// Thresholds every step must meet: `pNN<DURATION` (p50, p90, p99, p99.9),
    /// `max<DURATION`, `loss<PERCENT%`, comma-separated. Any other problem
    /// (closes, ERR lines, failed connects) also fails a step.
    #[arg(long, value_name = "THRESHOLDS", default_value = "p99<800ms,loss<1%")]
    pub slo: String,

    /// Write an HTML report of the ramp (step table, latency percentiles and
    /// throughput over time, latency histograms as inline SVG; no network needed to view).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

/// Descriptors kept for things other than connections (poll, stdio, /proc reads).
const FD_RESERVE: u64 = 32;

/// A fully resolved plan for one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The mode.
    pub mode: Mode,
    /// The protocol.
    pub protocol: Protocol,
    /// The URL as given (or defaulted).
    pub url: String,
    /// The resolved target address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub authority: String,
    /// Request target (path and query) for every connection.
    pub target: String,
    /// The URL's path (resume mode builds `PATH?resume=TOKEN` from it).
    pub path: String,
    /// Receivers (broadcast/latency), connections (idle/echo), slots (churn).
    pub receivers: usize,
    /// Senders (broadcast/latency), else 0.
    pub senders: usize,
    /// Message size.
    pub size: usize,
    /// Open-loop rate (messages/s in total), or None for closed loop.
    pub rate: Option<f64>,
    /// Closed-loop window per sender.
    pub window: usize,
    /// Source addresses to bind (empty: kernel's choice).
    pub sources: Vec<Ipv4Addr>,
    /// The flags.
    pub args: LoadArgs,
}

impl Plan {
    /// Check and resolve the flags.
    pub fn new(args: LoadArgs) -> Result<Plan, String> {
        let url = args.url.clone().unwrap_or_else(|| {
            if args.mode == Mode::Echo {
                "ws://127.0.0.1:9000/echo".into()
            } else {
                "ws://127.0.0.1:9000/ws".into()
            }
        });
        let parsed = WsUrl::parse(&url)?;
        let addr = (parsed.host.as_str(), parsed.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}: {e}", parsed.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", parsed.host))?;
        let mut query = parsed.query.clone();
        let chat = args.protocol == Protocol::Loopchat && args.mode != Mode::Echo;
        if chat && !query.split('&').any(|p| p.starts_with("room=")) {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str("room=");
            query.push_str(&args.room);
        }
        if args.mode == Mode::Resume {
            if args.protocol != Protocol::Loopchat {
                return Err("--mode resume needs --protocol loopchat".into());
            }
            if args.rounds == 0 {
                return Err("--rounds must be at least 1".into());
            }
            match query.split('&').find_map(|p| p.strip_prefix("caps=")) {
                _ if args.fresh => {}
                None => query.push_str("&caps=resume"),
                Some(caps)
                    if caps
                        .replace("%2C", ",")
                        .replace("%2c", ",")
                        .split(',')
                        .any(|c| c == "resume") => {}
                Some(caps) => {
                    return Err(format!(
                    "--mode resume needs the resume capability, but the URL asks for caps={caps}"
                ))
                }
            }
            if query.split('&').any(|p| p.starts_with("resume=")) {
                return Err(
                    "--mode resume takes the sessions itself: no resume= in the URL".into(),
                );
            }
        }
        let target = if query.is_empty() {
            parsed.path.clone()
        } else {
            format!("{}?{}", parsed.path, query)
        };
        let (receivers, senders, rate) = match args.mode {
            Mode::Idle | Mode::Churn | Mode::Echo | Mode::Resume => (args.connections, 0, None),
            Mode::Broadcast => (args.receivers, args.senders, args.rate),
            Mode::Latency => (args.receivers, 1, Some(args.rate.unwrap_or(100.0))),
        };
        if let Some(r) = rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--rate must be positive, not {r}"));
            }
        }
        if matches!(args.mode, Mode::Broadcast | Mode::Latency) && (receivers == 0 || senders == 0)
        {
            return Err("broadcast needs at least one receiver and one sender".into());
        }
        if receivers == 0 {
            return Err("--connections must be at least 1".into());
        }
        if u32::try_from(receivers + senders).is_err() {
            return Err("too many connections".into());
        }
        let window = args
            .window
            .unwrap_or(if args.mode == Mode::Echo { 1 } else { 8 })
            .max(1);
        if args.mode == Mode::Echo && args.size < 8 {
            return Err("echo needs --size of at least 8 bytes (it carries a timestamp)".into());
        }
        if let Some(pid) = args.server_pid {
            if sys::proc_sample(pid).is_none() {
                return Err(format!(
                    "--server-pid {pid}: no such process (or /proc/{pid} is not readable)"
                ));
            }
        }
        let sources = (0..args.sources)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(i)))
            .collect();
        if args.sources > 0 && !addr.is_ipv4() {
            return Err("--sources needs an IPv4 target".into());
        }
        Ok(Plan {
            mode: args.mode,
            protocol: args.protocol,
            url,
            addr,
            authority: parsed.authority,
            target,
            path: parsed.path.clone(),
            receivers,
            senders,
            size: args.size,
            rate,
            window,
            sources,
            args,
        })
    }

    /// Connections open at once at most.
    pub fn max_open(&self) -> usize {
        self.receivers + self.senders
    }
}

/// Raise RLIMIT_NOFILE to the hard limit and check that `conns` connections fit.
pub fn check_descriptors(conns: usize) -> Result<u64, String> {
    let (_, soft) = crate::server::raise_nofile_limit()
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    let need = conns as u64 + FD_RESERVE;
    if need > soft {
        return Err(format!(
            "{conns} connections need about {need} file descriptors, but this process may open \
             only {soft} (RLIMIT_NOFILE hard limit): at most {} connections per generator here. \
             Ask for fewer, or run several generators (each with its own --sources range).",
            soft.saturating_sub(FD_RESERVE)
        ));
    }
    Ok(soft)
}

/// Run `loopchat load`; returns the exit code: 2 for bad flags or limits, 1
/// when the run failed (see [`report::LoadResult::problems`]: nothing opened,
/// connections refused or closed, deliveries lost, rate limiting), else 0.
pub fn run(args: LoadArgs) -> ExitCode {
    let plan = match Plan::new(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loopchat load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(what) = plan.args.ramp {
        return run_ramp(&plan, what);
    }
    if plan.args.report.is_some() {
        eprintln!("loopchat load: --report needs --ramp");
        return ExitCode::from(2);
    }
    if let Err(e) = check_descriptors(plan.max_open()) {
        eprintln!("loopchat load: {e}");
        return ExitCode::from(2);
    }
    match engine::run(&plan) {
        Ok(result) => {
            if plan.args.json {
                println!("{}", result.to_json());
            } else {
                print!("{}", result.to_text());
            }
            let problems = result.problems();
            for p in &problems {
                eprintln!("loopchat load: FAILED: {p}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loopchat load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `loopchat load --ramp`: 0 when at least the first step met the thresholds,
/// 1 when it did not (or a step could not run), 2 for bad flags.
fn run_ramp(plan: &Plan, what: ramp::RampWhat) -> ExitCode {
    let rp = match ramp::plan_ramp(plan, what) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loopchat load: {e}");
            return ExitCode::from(2);
        }
    };
    let top = match what {
        ramp::RampWhat::Connections => rp.limit as usize + plan.senders,
        ramp::RampWhat::Rate => plan.max_open(),
    };
    if let Err(e) = check_descriptors(top) {
        eprintln!("loopchat load: {e}");
        return ExitCode::from(2);
    }
    let quiet = plan.args.quiet;
    let result = ramp::run_ramp(plan, &rp, |st| {
        if !quiet {
            eprintln!(
                "step {} {}: {}",
                st.value,
                rp.unit(),
                if st.passed() {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", st.failures.join("; "))
                }
            );
        }
    });
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loopchat load: {e}");
            return ExitCode::FAILURE;
        }
    };
    if plan.args.json {
        println!("{}", result.to_json());
    } else {
        print!("{}", result.to_text());
    }
    if let Some(path) = &plan.args.report {
        let cmd: Vec<String> = std::env::args().collect();
        match std::fs::write(path, html::ramp_report(&result, &cmd.join(" "))) {
            Ok(()) => eprintln!("loopchat load: report written to {}", path.display()),
            Err(e) => {
                eprintln!("loopchat load: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if result.capacity().is_some() {
        ExitCode::SUCCESS
    } else {
        eprintln!("loopchat load: FAILED: {}", result.verdict());
        ExitCode::FAILURE
    }
}

/// Run a plan in this thread and return its result (for tests and scripts).
pub fn run_plan(plan: &Plan) -> std::io::Result<report::LoadResult> {
    engine::run(plan)
}
