//! Helpers shared by the command-line front ends (server, client, load generator).

use std::net::SocketAddr;
use std::time::Duration;

/// Parse a byte-size flag: a whole number of bytes, optionally followed by a unit
/// (case-insensitive, spaces allowed): `k`, `KiB` = 1024; `m`, `MiB` = 1024²;
/// `g`, `GiB` = 1024³; `KB`, `MB`, `GB` are the decimal 1000-based units; `B` is
/// bytes. So `16MiB`, `64KiB`, `512k` and `4096` all work.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let help = "use a whole number of bytes with an optional unit: 4096, 512k, 64KiB, 16MiB, 1GiB";
    if num.is_empty() {
        return Err(format!("`{s}` is not a size ({help})"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        u => return Err(format!("unknown unit `{u}` in `{s}` ({help})")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parse a listening address `HOST:PORT` (`127.0.0.1:9000`, `0.0.0.0:9000`,
/// `[::]:9000`); the error says what is valid, and suggests one for a bare port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let hint = if t.parse::<u16>().is_ok() {
        format!(" (did you mean 127.0.0.1:{t}, or 0.0.0.0:{t} for every interface?)")
    } else {
        String::new()
    };
    Err(format!(
        "`{s}` is not IP:PORT; use an IP address and a port such as 127.0.0.1:9000, \
         0.0.0.0:9000 or [::]:9000 (host names are not resolved){hint}"
    ))
}

/// Parse a duration flag: `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512k"), Ok(512 * 1024));
        assert_eq!(parse_bytes("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("16 mib"), Ok(16 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("2KB"), Ok(2000));
        assert_eq!(parse_bytes("100b"), Ok(100));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("1.5MiB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }

    #[test]
    fn listen_addresses_say_what_is_valid() {
        assert_eq!(
            parse_listen("127.0.0.1:9000"),
            Ok("127.0.0.1:9000".parse().unwrap())
        );
        assert!(parse_listen("[::]:0").is_ok());
        let e = parse_listen("9000").unwrap_err();
        assert!(e.contains("127.0.0.1:9000"), "{e}");
        let e = parse_listen("localhost:9000").unwrap_err();
        assert!(e.contains("IP:PORT"), "{e}");
    }
}
