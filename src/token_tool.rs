//! `loopchat token`: print an HS256 token signed with a key file, so operators,
//! scripts and tests can make one without other software. An application
//! that already has a JWT library signs the same claims itself.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::token::{sign, Claims, Key, Policy, MAX_TTL_LIMIT};
use crate::chat::access::{valid_pattern, Role};
use crate::chat::names::valid_nick;

/// Flags of `loopchat token`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The key file (the same file the server's `--auth-key` reads).
    #[arg(long, value_name = "FILE")]
    pub key: std::path::PathBuf,

    /// The subject: the nick the token holder gets.
    #[arg(long, value_name = "NICK")]
    pub sub: String,

    /// Lifetime: `exp` is now plus this (the server refuses more than its `--auth-max-ttl`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::cli::parse_duration)]
    pub ttl: Duration,

    /// `viewer` (read only), `member` (the default) or `mod` (may also /kick).
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    pub role: Option<Role>,

    /// Rooms the holder may join, comma-separated; `*` matches any run of name bytes.
    #[arg(long, value_name = "PATTERNS")]
    pub rooms: Option<String>,

    /// The `aud` claim (must match the server's `--auth-audience` when that is set).
    #[arg(long, value_name = "AUDIENCE")]
    pub aud: Option<String>,

    /// The `iss` claim (must match the server's `--auth-issuer` when that is set).
    #[arg(long, value_name = "ISSUER")]
    pub iss: Option<String>,

    /// Start of validity (`nbf`) this long from now; `iat` is always now.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
    pub not_before: Option<Duration>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("`{s}` is not a role (viewer, member or mod)"))
}

/// The claims `args` describe at `now` (Unix seconds).
pub fn claims(args: &TokenArgs, now: u64) -> Result<Claims, String> {
    if !valid_nick(&args.sub) {
        return Err(format!(
            "--sub `{}` is not a valid nick (1-32 of A-Z a-z 0-9 _ . -)",
            args.sub
        ));
    }
    if args.ttl.as_secs() > MAX_TTL_LIMIT {
        return Err(format!(
            "--ttl {}s is longer than any server accepts ({MAX_TTL_LIMIT}s, 18h: --auth-max-ttl's ceiling)",
            args.ttl.as_secs()
        ));
    }
    let mut c = Claims::new(&args.sub, now + args.ttl.as_secs().max(1));
    c.iat = Some(now);
    c.nbf = args.not_before.map(|d| now + d.as_secs());
    c.role = args.role.unwrap_or_default();
    if let Some(rooms) = &args.rooms {
        let list: Vec<String> = rooms.split(',').map(|r| r.trim().to_string()).collect();
        if let Some(bad) = list.iter().find(|p| !valid_pattern(p)) {
            return Err(format!("--rooms: `{bad}` is not a room pattern"));
        }
        c.rooms = Some(list);
    }
    c.aud = args.aud.iter().cloned().collect();
    c.iss = args.iss.clone();
    Ok(c)
}

/// Run `loopchat token`: print the token and a newline on stdout.
pub fn run(args: TokenArgs) -> ExitCode {
    let bytes = match std::fs::read(&args.key) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("loopchat token: cannot read {}: {e}", args.key.display());
            return ExitCode::FAILURE;
        }
    };
    let key = match Key::from_file_bytes(&bytes) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("loopchat token: {}: {e}", args.key.display());
            return ExitCode::FAILURE;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match claims(&args, now) {
        Ok(c) => {
            let default_max = Policy::default().max_ttl;
            if args.ttl.as_secs() > default_max {
                eprintln!(
                    "loopchat token: warning: --ttl is over {}h, the server's default --auth-max-ttl; \
                     a server without a larger --auth-max-ttl refuses this token",
                    default_max / 3600
                );
            }
            println!("{}", sign(&c, &key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopchat token: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ttl: Duration) -> TokenArgs {
        TokenArgs {
            key: "unused".into(),
            sub: "alice".into(),
            ttl,
            role: None,
            rooms: None,
            aud: None,
            iss: None,
            not_before: None,
        }
    }

    #[test]
    fn a_lifetime_no_server_accepts_is_refused() {
        let now = 1_000_000;
        let c = claims(&args(Duration::from_secs(MAX_TTL_LIMIT)), now).unwrap();
        assert_eq!(c.exp, now + MAX_TTL_LIMIT);
        let err = claims(&args(Duration::from_secs(MAX_TTL_LIMIT + 1)), now).unwrap_err();
        assert!(err.contains("--ttl"), "{err}");
    }
}
