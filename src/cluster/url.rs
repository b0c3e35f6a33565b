//! `redis://[[user]:password@]host[:port][/db]`

use std::fmt;

/// A parsed Redis URL. The host is resolved once, before the event loop starts.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or IP address (brackets removed from IPv6 literals).
    pub host: String,
    /// TCP port (default 6379).
    pub port: u16,
    /// ACL user name for `AUTH user password` (Redis 6+); `None` for `AUTH password`.
    pub username: Option<String>,
    /// Password for `AUTH`; `None` sends no `AUTH`.
    pub password: Option<String>,
    /// Database for `SELECT` (default 0, which sends no `SELECT`).
    pub db: u32,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(
            f,
            "redis://{}{}:{}/{}",
            if self.password.is_some() { "***@" } else { "" },
            self.host,
            self.port,
            self.db
        )
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad %-escape in the Redis URL".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the Redis URL is not UTF-8".to_string())
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| format!("`{s}`: a Redis URL starts with redis://"))?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)).transpose()?,
                    Some(percent_decode(p)?),
                ),
                None => (None, Some(percent_decode(a)?)),
            },
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => (
                h,
                d.parse()
                    .map_err(|_| format!("`{d}` is not a database number"))?,
            ),
            None => (hostpart, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "unclosed [ in the Redis URL".to_string())?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port `{p}`"))?,
                None if after.is_empty() => 6379,
                None => return Err(format!("unexpected `{after}` after the host")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port `{p}`"))?,
                ),
                None => (hostport.to_string(), 6379),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}`: no host in the Redis URL"));
        }
        Ok(RedisUrl {
            host,
            port,
            username,
            password,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u: RedisUrl = "redis://127.0.0.1:6380".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 0));
        assert_eq!(u.password, None);
        let u: RedisUrl = "redis://:s%40cret@redis.local/3".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("redis.local", 6379, 3));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.username, None);
        let u: RedisUrl = "redis://bob:pw@[::1]:7000/1".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 7000, 1));
        assert_eq!(u.username.as_deref(), Some("bob"));
        assert!(!format!("{u}").contains("pw"));
        assert!("http://x".parse::<RedisUrl>().is_err());
        assert!("redis://:6379".parse::<RedisUrl>().is_err());
        assert!("redis://h:port".parse::<RedisUrl>().is_err());
        assert!("redis://h/x".parse::<RedisUrl>().is_err());
    }
}
