//! Signed tokens in the server (`--auth-key`): the key file, read at start and
//! on SIGHUP; the token on `/ws?token=` (checked before the upgrade, 401 when
//! bad) and in `/auth TOKEN` lines; the guest policy; token expiry.
//!
//! The checks themselves are `crate::auth` (no I/O); the chat side of a
//! session is `chat::hub` (`connect_as`, `sign_in`, `expire`). This file only
//! reads the key file and the wall clock and routes the results. Every
//! decision is logged at info with the subject (or, for a refused token, the
//! peer address and the reason), never the token.
//!
//! Choices where PROTOCOL.md is silent:
//! - `--guests deny` answers a `/ws` upgrade without `?token=` with 401 (as
//!   PROTOCOL.md says); a line-listener connection has no upgrade, so it is
//!   held without a nick or room until its first line, which must be
//!   `/auth TOKEN` (anything else: `ERR forbidden` and close 1008);
//! - a held signed session may be resumed where guests are denied: a `/ws`
//!   upgrade with `?resume=` naming one, or a live one it takes over (and
//!   no `?token=`), is admitted, and
//!   so is a line-listener connection whose first line is `/resume TOKEN`;
//!   the session token proves the identity. Any other resume still needs a
//!   token (401, or `ERR forbidden` and close 1008);
//! - the 401 carries `WWW-Authenticate: Bearer` (RFC 6750) and the reason;
//! - `/auth` lines skip the chat's rate limit: a bad one closes the
//!   connection, and a good one costs about as much as any chat line.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};

use super::conn::{Kind, IN_CHAT};
use super::out::{begin_close, Out};
use super::timer::TICK_MS;
use super::Server;
use crate::auth::token::{Claims, Key, KeySet, Policy, TokenError, MAX_LEEWAY, MAX_TTL_LIMIT};
use crate::auth::{auth_command, verify};
use crate::chat::access::{Grant, Role};
use crate::chat::hub::{Connect, Identity};
use crate::chat::line::Line;
use crate::chat::{ErrorCode, Sink};

/// What a connection without a token gets when `--auth-key` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestPolicy {
    /// Refused: 401 on `/ws`; `/auth` first on the line listener.
    Deny,
    /// A guest who may read but not speak (`viewer`).
    ReadOnly,
    /// A guest as without `--auth-key`.
    Allow,
}

/// Token settings; `Config::auth` is `None` without `--auth-key`.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The HS256 key file (its bytes, trailing whitespace trimmed, at least 32).
    pub key_file: PathBuf,
    /// Audience, issuer, leeway, size and lifetime caps.
    pub policy: Policy,
    /// Connections without a token.
    pub guests: GuestPolicy,
    /// How long the previous key stays accepted after a SIGHUP rotation.
    pub key_grace: Duration,
}

/// The `--auth-*`, `--guests` and `--kick-ban` flags, flattened into the
/// server's flags by `main.rs`.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// Require HS256 tokens signed with the key in FILE (re-read on SIGHUP);
    /// see `loopchat token`.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOOPCHAT_AUTH_KEY",
        help_heading = "Signed tokens"
    )]
    pub auth_key: Option<PathBuf>,

    /// Accept only tokens whose `aud` names this audience.
    #[arg(
        long,
        value_name = "AUDIENCE",
        requires = "auth_key",
        env = "LOOPCHAT_AUTH_AUDIENCE",
        help_heading = "Signed tokens"
    )]
    pub auth_audience: Option<String>,

    /// Accept only tokens whose `iss` is this issuer.
    #[arg(
        long,
        value_name = "ISSUER",
        requires = "auth_key",
        env = "LOOPCHAT_AUTH_ISSUER",
        help_heading = "Signed tokens"
    )]
    pub auth_issuer: Option<String>,

    /// Connections without a token with --auth-key: deny (401), read-only or allow.
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        requires = "auth_key",
        env = "LOOPCHAT_GUESTS",
        help_heading = "Signed tokens",
        hide_possible_values = true
    )]
    pub guests: Option<GuestPolicy>,

    /// Clock skew allowed on exp, nbf and iat (at most 10m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::cli::parse_duration, env = "LOOPCHAT_AUTH_LEEWAY", help_heading = "Signed tokens")]
    pub auth_leeway: Duration,

    /// Longest token in bytes.
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = crate::cli::parse_bytes, env = "LOOPCHAT_AUTH_MAX_TOKEN", help_heading = "Signed tokens")]
    pub auth_max_token: usize,

    /// Longest token lifetime accepted (exp - now; at most 18h).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = crate::cli::parse_duration, env = "LOOPCHAT_AUTH_MAX_TTL", help_heading = "Signed tokens")]
    pub auth_max_ttl: Duration,

    /// After SIGHUP loads a new key, the old one stays accepted this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::cli::parse_duration, env = "LOOPCHAT_AUTH_KEY_GRACE", help_heading = "Signed tokens")]
    pub auth_key_grace: Duration,

    /// How long a user removed by /kick may not rejoin that room (0 = no ban).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::cli::parse_duration, env = "LOOPCHAT_KICK_BAN", help_heading = "Signed tokens")]
    pub kick_ban: Duration,
}

impl AuthArgs {
    /// Put these flags into `cfg`; an error names the offending flag.
    pub fn apply(&self, cfg: &mut super::Config) -> Result<(), String> {
        if self.auth_leeway.as_secs() > MAX_LEEWAY {
            return Err(format!("--auth-leeway is at most {MAX_LEEWAY}s"));
        }
        if self.auth_max_ttl.as_secs() > MAX_TTL_LIMIT {
            return Err(format!("--auth-max-ttl is at most {MAX_TTL_LIMIT}s (18h)"));
        }
        if !(64..=64 * 1024).contains(&self.auth_max_token) {
            return Err("--auth-max-token must be between 64 and 65536 bytes".into());
        }
        cfg.chat.kick_ban_ms = self.kick_ban.as_millis() as u64;
        cfg.chat.token_leeway = self.auth_leeway.as_secs();
        cfg.auth = self.auth_key.as_ref().map(|key_file| AuthConfig {
            key_file: key_file.clone(),
            policy: Policy {
                audience: self.auth_audience.clone(),
                issuer: self.auth_issuer.clone(),
                leeway: self.auth_leeway.as_secs(),
                max_len: self.auth_max_token,
                max_ttl: self.auth_max_ttl.as_secs(),
            },
            guests: self.guests.unwrap_or(GuestPolicy::Deny),
            key_grace: self.auth_key_grace,
        });
        Ok(())
    }
}

/// The running token state: the settings and the keys.
pub(super) struct Auth {
    cfg: AuthConfig,
    keys: KeySet,
    /// The key file's bytes as last loaded, to tell a real rotation from a
    /// SIGHUP that changed nothing.
    loaded: Vec<u8>,
}

/// The wall clock in Unix seconds (token times are wall-clock times).
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_key(cfg: &AuthConfig) -> io::Result<(Key, Vec<u8>)> {
    let bytes = std::fs::read(&cfg.key_file).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("auth key {}: {e}", cfg.key_file.display()),
        )
    })?;
    let key = Key::from_file_bytes(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("auth key {}: {e}", cfg.key_file.display()),
        )
    })?;
    Ok((key, bytes))
}

impl Auth {
    /// Read the key file; an unreadable or short key stops the start.
    pub(super) fn load(cfg: AuthConfig) -> io::Result<Auth> {
        let (key, loaded) = read_key(&cfg)?;
        // The flag's spelling, so the log names what the operator typed.
        let guests = match cfg.guests {
            GuestPolicy::Deny => "deny",
            GuestPolicy::ReadOnly => "read-only",
            GuestPolicy::Allow => "allow",
        };
        info!(
            "auth: tokens required (key {}, guests {guests})",
            cfg.key_file.display()
        );
        Ok(Auth {
            keys: KeySet::new(key),
            loaded,
            cfg,
        })
    }

    /// SIGHUP: read the key file again; a new key becomes current and the old
    /// one stays accepted for the grace period. A bad file keeps the old key.
    pub(super) fn reload(&mut self, now: u64) {
        match read_key(&self.cfg) {
            Ok((_, bytes)) if bytes == self.loaded => info!("auth: SIGHUP, key unchanged"),
            Ok((key, bytes)) => {
                self.keys.rotate(key, now + self.cfg.key_grace.as_secs());
                self.loaded = bytes;
                info!(
                    "auth: SIGHUP, new key loaded; the previous key is accepted for {:?}",
                    self.cfg.key_grace
                );
            }
            Err(e) => error!("auth: SIGHUP, keeping the current key: {e}"),
        }
    }

    fn check(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        verify(token.as_bytes(), &self.keys, &self.cfg.policy, now).map(Claims::into_grant)
    }
}

/// How a `/ws` upgrade goes with `--auth-key`.
pub(super) enum Admission {
    /// Upgrade with this identity.
    Admit(Identity),
    /// Answer 401 with this reason.
    Refuse(String),
}

impl Server {
    /// Read the key file when `--auth-key` is set.
    pub(super) fn start_auth(&mut self) -> io::Result<()> {
        if let Some(cfg) = self.ctx.cfg.auth.clone() {
            self.auth = Some(Box::new(Auth::load(cfg)?));
        }
        Ok(())
    }

    /// SIGHUP.
    pub(super) fn reload_auth(&mut self) {
        match self.auth.as_deref_mut() {
            Some(a) => a.reload(unix_now()),
            None => info!("SIGHUP ignored: no --auth-key"),
        }
    }

    /// Decide a `/ws` upgrade from `id` with `token` (`?token=`); `None` when
    /// tokens are off (a guest as always).
    pub(super) fn admission(
        &mut self,
        id: usize,
        token: Option<&str>,
        resume: Option<&str>,
    ) -> Option<Admission> {
        let auth = self.auth.as_deref()?;
        let ip = self.conns.get(id).map(|c| c.ip);
        let ip = ip.map_or_else(String::new, |ip| ip.to_string());
        Some(match token.filter(|t| !t.is_empty()) {
            Some(t) => match auth.check(t, unix_now()) {
                Ok(grant) => Admission::Admit(Identity::Signed(grant)),
                Err(e) => {
                    info!("auth: {ip} token refused before the upgrade: {e}");
                    self.ctx.metrics.handshake_failed("bad_token");
                    Admission::Refuse(format!("bad token: {e}\n"))
                }
            },
            None => match auth.cfg.guests {
                GuestPolicy::Deny
                    if resume.is_some_and(|r| self.hub.resumes_signed(r, self.ctx.now_ms)) =>
                {
                    info!("auth: {ip} admitted to resume a signed session");
                    Admission::Admit(Identity::Guest(Role::Viewer))
                }
                GuestPolicy::Deny => {
                    info!("auth: {ip} refused: no token and guests are denied");
                    self.ctx.metrics.handshake_failed("no_token");
                    Admission::Refuse("token required\n".into())
                }
                GuestPolicy::ReadOnly => {
                    info!("auth: {ip} admitted as a read-only guest");
                    Admission::Admit(Identity::Guest(Role::Viewer))
                }
                GuestPolicy::Allow => {
                    info!("auth: {ip} admitted as a guest");
                    Admission::Admit(Identity::Guest(Role::Member))
                }
            },
        })
    }

    /// A new line-listener connection: into the chat now, unless guests are
    /// denied, in which case it waits (outside the chat) for `/auth`.
    pub(super) fn admit_line(&mut self, id: usize) {
        let who = match self.auth.as_deref().map(|a| a.cfg.guests) {
            None | Some(GuestPolicy::Allow) => Identity::Guest(Role::Member),
            Some(GuestPolicy::ReadOnly) => Identity::Guest(Role::Viewer),
            Some(GuestPolicy::Deny) => return,
        };
        self.conns[id].set(IN_CHAT);
        let now = self.ctx.now_ms;
        let (hub, mut out) = self.chat();
        hub.connect_as(id, who, &Connect::default(), now, &mut out);
    }

    /// Handle `line` if it is the server's business (`/auth`, or any line of
    /// a line connection still waiting for `/auth`); true when it was.
    pub(super) fn auth_line(&mut self, id: usize, line: &str) -> bool {
        if self.auth.is_none() {
            return false;
        }
        let Some(c) = self.conns.get(id) else {
            return true;
        };
        let waiting = c.kind == Kind::Line && !c.has(IN_CHAT);
        let ip = c.ip;
        let token = auth_command(line);
        if !waiting && token.is_none() {
            return false;
        }
        if waiting && token.is_none() && self.resume_first(id, line) {
            return true;
        }
        let Some(auth) = self.auth.as_deref() else {
            return false;
        };
        let result = token.map(|t| auth.check(t, unix_now()));
        let now = self.ctx.now_ms;
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        match (waiting, result) {
            (true, None) => {
                info!("auth: {ip} refused: a line before /auth");
                let text = "sign in first: /auth TOKEN";
                refuse(&mut out, id, ErrorCode::Forbidden, text, "sign in first");
            }
            (_, Some(Err(e))) => {
                info!("auth: {ip} token refused: {e}");
                if waiting {
                    let text = e.to_string();
                    refuse(&mut out, id, ErrorCode::BadToken, &text, "bad token");
                } else {
                    self.hub.refuse_token(id, &e.to_string(), &mut out);
                }
            }
            (true, Some(Ok(grant))) => {
                if let Some(c) = out.conns.get_mut(id) {
                    c.set(IN_CHAT);
                }
                self.hub.connect_as(
                    id,
                    Identity::Signed(grant),
                    &Connect::default(),
                    now,
                    &mut out,
                );
            }
            (false, Some(Ok(grant))) => self.hub.sign_in(id, grant, &mut out),
            (false, None) => return false,
        }
        // A new or refreshed token: file the connection under its expiry.
        self.schedule(id);
        true
    }

    /// A line-listener connection waiting for `/auth` sent `line`: when it
    /// is `/resume TOKEN [ROOM=ID ...]` naming a held signed session, resume
    /// it (true); anything else is left to the caller.
    fn resume_first(&mut self, id: usize, line: &str) -> bool {
        let mut words = line.trim_end_matches('\r').split(' ');
        if words.next() != Some("/resume") {
            return false;
        }
        let Some(token) = words.next() else {
            return false;
        };
        if !self.hub.resumes_signed(token, self.ctx.now_ms) {
            return false;
        }
        // The `?since=` spelling of `ROOM=ID ...`.
        let since: String = words
            .filter(|w| !w.is_empty())
            .map(|w| w.replacen('=', ":", 1))
            .collect::<Vec<_>>()
            .join(",");
        if let Some(c) = self.conns.get_mut(id) {
            c.set(IN_CHAT);
        }
        let ip = self
            .conns
            .get(id)
            .map(|c| c.ip.to_string())
            .unwrap_or_default();
        info!("auth: {ip} resumes a signed session");
        let now = self.ctx.now_ms;
        let args = Connect {
            resume: Some(token),
            since: (!since.is_empty()).then_some(since.as_str()),
            ..Connect::default()
        };
        let (hub, mut out) = self.chat();
        hub.connect_as(id, Identity::Guest(Role::Viewer), &args, now, &mut out);
        self.schedule(id);
        true
    }

    /// The wheel tick at which `id`'s token expires, for a signed chat
    /// connection: the first tick at or after `exp` plus the leeway.
    pub(super) fn token_tick(&self, id: usize) -> Option<u32> {
        self.auth.as_ref()?;
        if !self.conns.get(id)?.has(IN_CHAT) {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at = self.hub.token_deadline(id, now.as_secs())?;
        let ms = (at * 1000).saturating_sub(now.as_millis() as u64);
        let ticks = ms.div_ceil(TICK_MS).min(u64::from(u32::MAX));
        Some(self.ctx.tick.saturating_add(ticks as u32))
    }

    /// `id`'s timer fired: end its session if its token expired (the wheel
    /// works in monotonic ticks, the token in wall-clock seconds, so the check
    /// is made again against the wall clock).
    pub(super) fn expire_token(&mut self, id: usize) {
        if self.auth.is_none() {
            return;
        }
        let now = unix_now();
        let (hub, mut out) = self.chat();
        hub.expire_if_due(id, now, &mut out);
    }
}

/// `ERR CODE TEXT` to a connection that never got into the chat, then its
/// close.
fn refuse(out: &mut Out<'_>, id: usize, code: ErrorCode, text: &str, reason: &str) {
    let mut line = String::new();
    Line::Err { code, text }.write_str(&mut line, None);
    out.deliver(&[id], &line);
    close_now(out, id, reason);
}

fn close_now(out: &mut Out<'_>, id: usize, reason: &str) {
    if let Some(c) = out.conns.get_mut(id) {
        begin_close(out.ctx, id, c, 1008, reason);
    } else {
        warn!("auth: connection {id} vanished before its close");
    }
}
