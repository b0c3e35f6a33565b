//! HS256 JSON Web Tokens (RFC 7519, JWS compact serialization of RFC 7515):
//! verification against a [`KeySet`] and signing.
//!
//! Verification order, cheapest and most hostile first: length cap, three
//! base64url parts (no padding, RFC 7515 section 2), header parsed and `alg`
//! required to be exactly `HS256` (so `none`, `HS512` and every confusion attack
//! stop before any MAC work), signature checked in constant time
//! ([`hmac::Mac::verify_slice`]) with the current key and then the previous key
//! while its grace period lasts, and only then the claims parsed and checked.
//! Every failure is a typed [`TokenError`]; none of them carries token bytes,
//! so logging an error never logs a token.
//!
//! Claims (PROTOCOL.md "Signed tokens"): `sub` a valid NICK, `exp` required,
//! `nbf` and `iat` honoured with a leeway, `aud` (a string or an array) and
//! `iss` checked when the policy names them, `role` one of
//! `viewer`/`member`/`mod` (default `member`), `rooms` an array (or a
//! comma-separated string) of room patterns where `*` matches any run of name
//! bytes. Unknown claims are ignored, as RFC 7519 section 4 asks. A header with
//! `crit` is refused (RFC 7515 section 4.1.11: we understand no extensions).
//! `exp` further ahead than the policy's `max_ttl` is refused, which keeps a
//! leaked token's lifetime bounded and lets the hub keep a 16-bit tag of `exp`.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::json::{parse_object, Value};
use crate::chat::access::{valid_pattern, Grant, Role};
use crate::chat::names::valid_nick;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted: RFC 7518 section 3.2 asks for a key at least as long
/// as the hash output (256 bits).
pub const MIN_KEY_BYTES: usize = 32;

/// Default cap on a token's length in bytes.
pub const DEFAULT_MAX_TOKEN: usize = 4096;

/// Why a token was refused. The `Display` text is what follows
/// `ERR bad-token` on the wire; it never contains token bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than the configured cap.
    TooLong,
    /// Not three dot-separated parts.
    Malformed,
    /// A part is not unpadded base64url.
    BadBase64,
    /// The header or claims are not an accepted JSON object.
    BadJson(&'static str),
    /// `alg` is not `HS256` (`none` included), or `typ`/`crit` are unsupported.
    BadAlgorithm,
    /// No key in the set produced this signature.
    BadSignature,
    /// `exp` is missing.
    MissingExp,
    /// A time claim is not a non-negative number of seconds.
    BadTime,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `iat` (minus leeway) is in the future.
    IssuedInFuture,
    /// `exp` is further ahead than the configured maximum lifetime.
    TooLongLived,
    /// `sub` is missing or not a valid nick.
    BadSubject,
    /// `aud` does not name the configured audience.
    BadAudience,
    /// `iss` is not the configured issuer.
    BadIssuer,
    /// `role` is not `viewer`, `member` or `mod`.
    BadRole,
    /// `rooms` is not a list of room patterns.
    BadRooms,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::TooLong => f.write_str("token too long"),
            TokenError::Malformed => f.write_str("not a JWT"),
            TokenError::BadBase64 => f.write_str("bad base64url"),
            TokenError::BadJson(why) => write!(f, "bad JSON: {why}"),
            TokenError::BadAlgorithm => f.write_str("algorithm not accepted (HS256 only)"),
            TokenError::BadSignature => f.write_str("bad signature"),
            TokenError::MissingExp => f.write_str("exp missing"),
            TokenError::BadTime => f.write_str("bad time claim"),
            TokenError::Expired => f.write_str("expired"),
            TokenError::NotYetValid => f.write_str("not yet valid"),
            TokenError::IssuedInFuture => f.write_str("issued in the future"),
            TokenError::TooLongLived => f.write_str("exp too far ahead"),
            TokenError::BadSubject => f.write_str("sub is not a valid nick"),
            TokenError::BadAudience => f.write_str("wrong audience"),
            TokenError::BadIssuer => f.write_str("wrong issuer"),
            TokenError::BadRole => f.write_str("unknown role"),
            TokenError::BadRooms => f.write_str("bad rooms claim"),
        }
    }
}

impl std::error::Error for TokenError {}

/// One HMAC key, kept as the keyed state so a check does not re-derive the
/// padded key blocks. `Debug` does not print the key.
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key file's contents are not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_BYTES`] bytes after trimming.
    TooShort(usize),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::TooShort(n) => write!(
                f,
                "key is {n} bytes; at least {MIN_KEY_BYTES} are needed for HS256"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// A key from a key file's bytes: the bytes as they are, minus trailing
    /// ASCII whitespace (so `echo secret > file` and editors' final newline
    /// give the same key as the application uses).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Key, KeyError> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Key::new(&bytes[..end])
    }

    /// A key from raw secret bytes.
    pub fn new(secret: &[u8]) -> Result<Key, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(secret.len()));
        }
        // HMAC takes keys of any length; the error is unreachable.
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| KeyError::TooShort(0))?;
        Ok(Key { mac })
    }

    fn verify(&self, signing_input: &[u8], sig: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac.verify_slice(sig).is_ok()
    }

    fn sign(&self, signing_input: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(signing_input);
        mac.finalize().into_bytes().into()
    }
}

/// The keys a token may be signed with: the current one, and after a rotation
/// the previous one until its grace period ends (so tokens issued just before
/// the application switched keys keep working).
#[derive(Clone, Debug)]
pub struct KeySet {
    current: Key,
    /// The previous key and the Unix second after which it is refused.
    previous: Option<(Key, u64)>,
}

impl KeySet {
    /// A set with one key.
    pub fn new(current: Key) -> Self {
        KeySet {
            current,
            previous: None,
        }
    }

    /// Make `key` current; the old current key stays accepted until `until`
    /// (Unix seconds). A grace of zero (`until <= now`) drops it at once.
    pub fn rotate(&mut self, key: Key, until: u64) {
        let old = std::mem::replace(&mut self.current, key);
        self.previous = Some((old, until));
    }

    /// True while a previous key is still accepted at `now`.
    pub fn has_previous(&self, now: u64) -> bool {
        self.previous
            .as_ref()
            .is_some_and(|(_, until)| now <= *until)
    }

    /// Sign with the current key.
    pub fn current(&self) -> &Key {
        &self.current
    }
}

/// What the checks of the claims expect; see the module docs.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Required member of `aud`, when set.
    pub audience: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (at most
    /// [`MAX_LEEWAY`]).
    pub leeway: u64,
    /// Longest accepted token in bytes.
    pub max_len: usize,
    /// Longest accepted `exp - now`, in seconds (at most [`MAX_TTL_LIMIT`]).
    pub max_ttl: u64,
}

/// The upper bound of [`Policy::max_ttl`] (18 h): the hub tells live expiry
/// times of one connection apart by their low 16 bits, so every live `exp`
/// plus the leeway (at most [`MAX_LEEWAY`]) must lie within 65,535 s of now.
pub const MAX_TTL_LIMIT: u64 = 64_800;

/// The upper bound of [`Policy::leeway`] (10 min).
pub const MAX_LEEWAY: u64 = 600;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            audience: None,
            issuer: None,
            leeway: 30,
            max_len: DEFAULT_MAX_TOKEN,
            max_ttl: 12 * 3600,
        }
    }
}

/// A verified token's claims, as the chat needs them plus what signing writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The nick.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    pub iat: Option<u64>,
    /// Audiences.
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: Option<String>,
    /// The role (`member` when absent).
    pub role: Role,
    /// Room patterns this token may join; `None` means any room.
    pub rooms: Option<Vec<String>>,
}

impl Claims {
    /// Claims for `sub` expiring at `exp`, member, any room.
    pub fn new(sub: &str, exp: u64) -> Self {
        Claims {
            sub: sub.to_string(),
            exp,
            nbf: None,
            iat: None,
            aud: Vec::new(),
            iss: None,
            role: Role::Member,
            rooms: None,
        }
    }

    /// What the chat keeps of these claims, moved out.
    pub fn into_grant(self) -> Grant {
        Grant {
            nick: self.sub,
            role: self.role,
            rooms: self
                .rooms
                .map(|r| r.into_iter().map(String::into_boxed_str).collect()),
            exp: self.exp,
        }
    }

    /// What the chat keeps of these claims.
    pub fn grant(&self) -> Grant {
        Grant {
            nick: self.sub.clone(),
            role: self.role,
            rooms: self
                .rooms
                .as_ref()
                .map(|r| r.iter().map(|p| p.as_str().into()).collect()),
            exp: self.exp,
        }
    }
}

/// Decode one unpadded base64url part into `out` (cleared first).
fn decode_part(part: &[u8], out: &mut Vec<u8>) -> Result<(), TokenError> {
    out.clear();
    URL_SAFE_NO_PAD
        .decode_vec(part, out)
        .map_err(|_| TokenError::BadBase64)
}

/// Check `token` against `keys` and `policy` at `now` (Unix seconds).
pub fn verify(
    token: &[u8],
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<Claims, TokenError> {
    if token.len() > policy.max_len {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let mut buf = Vec::with_capacity(token.len());
    if !COMMON_HEADERS.contains(&h) {
        decode_part(h, &mut buf)?;
        check_header(&buf)?;
    }
    // An HS256 MAC is 32 bytes: 43 base64url characters. The decoder refuses
    // non-canonical trailing bits, so each MAC has exactly one spelling.
    let mut mac = [0u8; 33];
    let sig = match URL_SAFE_NO_PAD.decode_slice(s, &mut mac) {
        Ok(32) => &mac[..32],
        Ok(_) => return Err(TokenError::BadSignature),
        Err(_) => return Err(TokenError::BadBase64),
    };
    let signing_input = &token[..h.len() + 1 + p.len()];
    let good = keys.current.verify(signing_input, sig)
        || keys
            .previous
            .as_ref()
            .is_some_and(|(k, until)| now <= *until && k.verify(signing_input, sig));
    if !good {
        return Err(TokenError::BadSignature);
    }
    decode_part(p, &mut buf)?;
    check_claims(&buf, policy, now)
}

/// The encoded headers nearly every HS256 library writes, accepted without
/// decoding (`header_fast_path_is_exact` checks each against `check_header`).
const COMMON_HEADERS: [&[u8]; 3] = [
    b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", // {"alg":"HS256","typ":"JWT"}
    b"eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9", // {"typ":"JWT","alg":"HS256"}
    b"eyJhbGciOiJIUzI1NiJ9",                 // {"alg":"HS256"}
];

fn check_header(json: &[u8]) -> Result<(), TokenError> {
    let members = parse_object(json).map_err(|e| TokenError::BadJson(e.0))?;
    let mut alg_ok = false;
    for (name, value) in &members {
        match (name.as_ref(), value) {
            ("alg", Value::Str(a)) => alg_ok = a == "HS256",
            ("alg", _) => return Err(TokenError::BadAlgorithm),
            // RFC 7519 section 5.1: "JWT" is recommended, case-insensitively.
            ("typ", Value::Str(t)) if t.eq_ignore_ascii_case("JWT") => {}
            ("typ", _) | ("crit", _) => return Err(TokenError::BadAlgorithm),
            _ => {}
        }
    }
    if alg_ok {
        Ok(())
    } else {
        Err(TokenError::BadAlgorithm)
    }
}

/// A NumericDate as whole seconds; fractions are dropped (RFC 7519 allows
/// them, none of our checks needs them).
fn seconds(v: &Value) -> Result<u64, TokenError> {
    match v {
        Value::Num(n) if *n >= 0.0 && *n < 1e15 => Ok(*n as u64),
        _ => Err(TokenError::BadTime),
    }
}

fn check_claims(json: &[u8], policy: &Policy, now: u64) -> Result<Claims, TokenError> {
    let members = parse_object(json).map_err(|e| TokenError::BadJson(e.0))?;
    let mut c = Claims::new("", 0);
    let mut exp = None;
    for (name, value) in members {
        match name.as_ref() {
            "sub" => match value {
                Value::Str(s) if valid_nick(&s) => c.sub = s.into_owned(),
                _ => return Err(TokenError::BadSubject),
            },
            "exp" => exp = Some(seconds(&value)?),
            "nbf" => c.nbf = Some(seconds(&value)?),
            "iat" => c.iat = Some(seconds(&value)?),
            "aud" => match value {
                Value::Str(s) => c.aud = vec![s.into_owned()],
                Value::Strs(v) => c.aud = v.into_iter().map(Cow::into_owned).collect(),
                _ => return Err(TokenError::BadAudience),
            },
            "iss" => match value {
                Value::Str(s) => c.iss = Some(s.into_owned()),
                _ => return Err(TokenError::BadIssuer),
            },
            "role" => match value {
                Value::Str(s) => c.role = Role::parse(&s).ok_or(TokenError::BadRole)?,
                _ => return Err(TokenError::BadRole),
            },
            "rooms" => {
                let list: Vec<String> = match value {
                    Value::Strs(v) => v.into_iter().map(Cow::into_owned).collect(),
                    // A comma-separated string, as `loopchat token --rooms` takes it.
                    Value::Str(s) => s.split(',').map(str::to_string).collect(),
                    _ => return Err(TokenError::BadRooms),
                };
                if !list.iter().all(|p| valid_pattern(p)) {
                    return Err(TokenError::BadRooms);
                }
                c.rooms = Some(list);
            }
            _ => {}
        }
    }
    if c.sub.is_empty() {
        return Err(TokenError::BadSubject);
    }
    c.exp = exp.ok_or(TokenError::MissingExp)?;
    let leeway = policy.leeway.min(MAX_LEEWAY);
    if now >= c.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if c.exp > now.saturating_add(policy.max_ttl.min(MAX_TTL_LIMIT)) {
        return Err(TokenError::TooLongLived);
    }
    if c.nbf
        .is_some_and(|nbf| nbf > now.saturating_add(policy.leeway))
    {
        return Err(TokenError::NotYetValid);
    }
    if c.iat
        .is_some_and(|iat| iat > now.saturating_add(policy.leeway))
    {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(want) = &policy.audience {
        if !c.aud.iter().any(|a| a == want) {
            return Err(TokenError::BadAudience);
        }
    }
    if let Some(want) = &policy.issuer {
        if c.iss.as_deref() != Some(want.as_str()) {
            return Err(TokenError::BadIssuer);
        }
    }
    Ok(c)
}

/// Append `s` as the inside of a JSON string.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn push_member(out: &mut String, name: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
}

fn push_str_member(out: &mut String, name: &str, value: &str) {
    push_member(out, name);
    out.push('"');
    push_json_str(out, value);
    out.push('"');
}

/// The claims as a compact JSON object (`role` and `rooms` only when set).
pub fn claims_json(c: &Claims) -> String {
    let mut out = String::from("{");
    push_str_member(&mut out, "sub", &c.sub);
    push_member(&mut out, "exp");
    out.push_str(&c.exp.to_string());
    for (name, v) in [("nbf", c.nbf), ("iat", c.iat)] {
        if let Some(v) = v {
            push_member(&mut out, name);
            out.push_str(&v.to_string());
        }
    }
    if let [one] = c.aud.as_slice() {
        push_str_member(&mut out, "aud", one);
    } else if !c.aud.is_empty() {
        push_member(&mut out, "aud");
        push_str_array(&mut out, &c.aud);
    }
    if let Some(iss) = &c.iss {
        push_str_member(&mut out, "iss", iss);
    }
    if c.role != Role::Member {
        push_str_member(&mut out, "role", c.role.as_str());
    }
    if let Some(rooms) = &c.rooms {
        push_member(&mut out, "rooms");
        push_str_array(&mut out, rooms);
    }
    out.push('}');
    out
}

fn push_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        push_json_str(out, s);
        out.push('"');
    }
    out.push(']');
}

/// Sign `claims` with `key`: `base64url(header).base64url(claims).base64url(mac)`.
pub fn sign(claims: &Claims, key: &Key) -> String {
    sign_raw(r#"{"alg":"HS256","typ":"JWT"}"#, &claims_json(claims), key)
}

/// Sign any header and payload text; for tests and the fuzz seeds, which need
/// tokens that are well signed but otherwise wrong.
pub fn sign_raw(header: &str, payload: &str, key: &Key) -> String {
    let mut out = URL_SAFE_NO_PAD.encode(header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let mac = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(mac, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn other_key() -> Key {
        Key::new(b"ffffffffffffffffffffffffffffffff").unwrap()
    }

    fn check(token: &str) -> Result<Claims, TokenError> {
        verify(
            token.as_bytes(),
            &KeySet::new(key()),
            &Policy::default(),
            NOW,
        )
    }

    fn with(f: impl FnOnce(&mut Claims)) -> String {
        let mut c = Claims::new("alice", NOW + 60);
        f(&mut c);
        sign(&c, &key())
    }

    #[test]
    fn a_signed_token_round_trips() {
        let mut c = Claims::new("alice", NOW + 60);
        c.role = Role::Mod;
        c.rooms = Some(vec!["dev".into(), "ops-*".into()]);
        c.aud = vec!["chat".into()];
        c.iss = Some("app".into());
        c.iat = Some(NOW);
        c.nbf = Some(NOW);
        assert_eq!(check(&sign(&c, &key())), Ok(c));
    }

    #[test]
    fn a_known_token_from_another_implementation_verifies() {
        // Made with Python: base64url(hmac.new(key, input, sha256)), key below.
        let k = Key::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let t = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IiLCJleHAiOjE4MDAwMDAwNjB9.2u1lRvDdxj6ubIp8dE-VaPtsxKdYsEyl1bG10--hhFI";
        assert_eq!(
            sign_raw(
                r#"{"typ":"JWT","alg":"HS256"}"#,
                r#"{"sub":"bob","exp":1800000060}"#,
                &k
            ),
            t
        );
        assert_eq!(check(t).unwrap().sub, "bob");
    }

    #[test]
    fn time_claims_with_leeway() {
        assert_eq!(
            check(&with(|c| c.exp = NOW - 29)).map(|c| c.sub),
            Ok("alice".into())
        );
        assert_eq!(check(&with(|c| c.exp = NOW - 30)), Err(TokenError::Expired));
        assert!(check(&with(|c| c.nbf = Some(NOW + 30))).is_ok());
        assert_eq!(
            check(&with(|c| c.nbf = Some(NOW + 31))),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check(&with(|c| c.iat = Some(NOW + 31))),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(
            check(&with(|c| c.exp = NOW + 12 * 3600 + 1)),
            Err(TokenError::TooLongLived)
        );
        let t = sign_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, &key());
        assert_eq!(check(&t), Err(TokenError::MissingExp));
        let t = sign_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a","exp":"soon"}"#, &key());
        assert_eq!(check(&t), Err(TokenError::BadTime));
        let t = sign_raw(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060.75}"#,
            &key(),
        );
        assert_eq!(check(&t).map(|c| c.exp), Ok(NOW + 60));
    }

    #[test]
    fn algorithms_other_than_hs256_are_refused() {
        let body = r#"{"sub":"alice","exp":1800000060}"#;
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","crit":["b64"]}"#,
            r#"{"alg":"HS256","typ":"JOSE+JSON"}"#,
        ] {
            assert_eq!(
                check(&sign_raw(header, body, &key())),
                Err(TokenError::BadAlgorithm),
                "{header}"
            );
        }
        // The classic unsigned token: empty signature part.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(body)
        );
        assert_eq!(check(&none), Err(TokenError::BadAlgorithm));
    }

    #[test]
    fn signatures_and_keys() {
        let t = with(|_| {});
        assert_eq!(
            verify(
                t.as_bytes(),
                &KeySet::new(other_key()),
                &Policy::default(),
                NOW
            ),
            Err(TokenError::BadSignature)
        );
        // A flipped bit anywhere in the signature or payload.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            verify(&bad, &KeySet::new(key()), &Policy::default(), NOW),
            Err(TokenError::BadSignature)
        );
        // Rotation: the old key holds until its grace ends.
        let mut ks = KeySet::new(key());
        ks.rotate(other_key(), NOW + 10);
        assert!(verify(t.as_bytes(), &ks, &Policy::default(), NOW).is_ok());
        assert!(ks.has_previous(NOW + 10));
        let fresh = sign(&Claims::new("alice", NOW + 60), &other_key());
        assert!(verify(fresh.as_bytes(), &ks, &Policy::default(), NOW + 11).is_ok());
        assert_eq!(
            verify(t.as_bytes(), &ks, &Policy::default(), NOW + 11),
            Err(TokenError::BadSignature)
        );
        assert!(Key::new(b"short").is_err());
        assert!(Key::from_file_bytes(b"0123456789abcdef0123456789abcdef\n").is_ok());
        assert_eq!(
            Key::from_file_bytes(b"0123456789abcdef0123456789abcde\n\n").unwrap_err(),
            KeyError::TooShort(31)
        );
    }

    #[test]
    fn header_fast_path_is_exact() {
        for h in COMMON_HEADERS {
            let json = URL_SAFE_NO_PAD.decode(h).unwrap();
            assert_eq!(
                check_header(&json),
                Ok(()),
                "{}",
                String::from_utf8_lossy(&json)
            );
        }
    }

    #[test]
    fn shape_errors() {
        assert_eq!(check("a.b"), Err(TokenError::Malformed));
        assert_eq!(check("a.b.c.d"), Err(TokenError::Malformed));
        assert_eq!(check(""), Err(TokenError::Malformed));
        assert_eq!(check("e30=.e30.AAAA"), Err(TokenError::BadBase64));
        assert_eq!(check("e3+.e30.AAAA"), Err(TokenError::BadBase64));
        assert_eq!(
            check("bm90IGpzb24.e30.AAAA"),
            Err(TokenError::BadJson("unexpected byte"))
        );
        let long = "a".repeat(DEFAULT_MAX_TOKEN + 1);
        assert_eq!(check(&long), Err(TokenError::TooLong));
        // Valid signature over a payload that is not JSON.
        let t = sign_raw(r#"{"alg":"HS256"}"#, "nope", &key());
        assert!(matches!(check(&t), Err(TokenError::BadJson(_))));
    }

    #[test]
    fn claim_errors() {
        assert_eq!(
            check(&with(|c| c.sub = "a b".into())),
            Err(TokenError::BadSubject)
        );
        assert_eq!(
            check(&with(|c| c.sub = "x".repeat(33))),
            Err(TokenError::BadSubject)
        );
        let t = sign_raw(r#"{"alg":"HS256"}"#, r#"{"exp":1800000060}"#, &key());
        assert_eq!(check(&t), Err(TokenError::BadSubject));
        let t = sign_raw(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060,"role":"admin"}"#,
            &key(),
        );
        assert_eq!(check(&t), Err(TokenError::BadRole));
        assert_eq!(
            check(&with(|c| c.rooms = Some(vec!["#x".into()]))),
            Err(TokenError::BadRooms)
        );
        let t = sign_raw(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060,"rooms":"dev,ops-*"}"#,
            &key(),
        );
        assert_eq!(
            check(&t).unwrap().rooms,
            Some(vec!["dev".to_string(), "ops-*".to_string()])
        );
        let t = sign_raw(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1800000060,"extra":[],"n":null,"b":true}"#,
            &key(),
        );
        assert!(check(&t).is_ok(), "unknown claims are ignored");
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let policy = Policy {
            audience: Some("chat".into()),
            issuer: Some("app".into()),
            ..Policy::default()
        };
        let ks = KeySet::new(key());
        let run = |t: String| verify(t.as_bytes(), &ks, &policy, NOW);
        assert_eq!(run(with(|_| {})), Err(TokenError::BadAudience));
        assert_eq!(
            run(with(|c| c.aud = vec!["other".into()])),
            Err(TokenError::BadAudience)
        );
        assert_eq!(
            run(with(|c| c.aud = vec!["chat".into()])),
            Err(TokenError::BadIssuer)
        );
        assert!(run(with(|c| {
            c.aud = vec!["x".into(), "chat".into()];
            c.iss = Some("app".into());
        }))
        .is_ok());
        assert_eq!(
            run(with(|c| {
                c.aud = vec!["chat".into()];
                c.iss = Some("evil".into());
            })),
            Err(TokenError::BadIssuer)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_refused_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            proptest::prop_assert!(verify(&bytes, &KeySet::new(key()), &Policy::default(), NOW).is_err());
        }

        #[test]
        fn any_single_byte_change_is_refused(pos in 0usize..1000, b in proptest::prelude::any::<u8>()) {
            let t = with(|c| c.role = Role::Viewer).into_bytes();
            let pos = pos % t.len();
            proptest::prop_assume!(t[pos] != b);
            let mut m = t.clone();
            m[pos] = b;
            // base64url has no unused bits in the header and payload parts here,
            // but the signature's last character carries 2 spare bits.
            let r = verify(&m, &KeySet::new(key()), &Policy::default(), NOW);
            if r.is_ok() {
                let last = t.len() - 1;
                proptest::prop_assert_eq!(pos, last);
            }
        }

        #[test]
        fn signed_claims_round_trip(sub in "[A-Za-z0-9_.-]{1,32}", ttl in 1u64..40000, mod_ in proptest::prelude::any::<bool>(),
                                    rooms in proptest::option::of(proptest::collection::vec("[a-z*]{1,8}", 0..4))) {
            let mut c = Claims::new(&sub, NOW + ttl);
            c.role = if mod_ { Role::Mod } else { Role::Viewer };
            c.rooms = rooms;
            proptest::prop_assert_eq!(check(&sign(&c, &key())), Ok(c));
        }
    }
}
