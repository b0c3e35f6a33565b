//! The RFC 6455 opening handshake over HTTP/1.1, without I/O.
//!
//! Server side: [`parse_request`] turns the bytes read so far into a [`Request`]
//! (or [`Status::Partial`]), [`Request::websocket`] validates an upgrade,
//! [`origin_allowed`] applies the Origin policy, and [`write_upgrade_response`] /
//! [`write_response`] / [`HttpError::write_response`] append the answer to an
//! outbox. Client side: [`generate_key`], [`write_client_request`] and
//! [`parse_response`].
//!
//! Parsing borrows from the caller's buffer and uses a header array on the
//! stack, so a request costs no heap allocation. httparse re-parses from the
//! start on every call; that keeps the parser stateless (nothing to store per
//! connection) and is cheap because the head is bounded by `max_header_bytes`.

use std::fmt;
use std::io::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 §1.3 appends to the client's key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers parsed per request; more are answered with 431 (browsers send ~12-20).
pub const MAX_HEADERS: usize = 32;

/// The request-head limit the server uses unless configured otherwise.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;

/// Length of a `Sec-WebSocket-Accept` value: base64 of a 20-byte SHA-1 digest.
pub const ACCEPT_KEY_LEN: usize = 28;

/// The body's content type for the plain-text error responses.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The outcome of an incremental parse: the head is in, or more bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// The head is complete.
    Complete(T),
    /// The head is not complete yet; call again with the same bytes plus more.
    Partial,
}

/// Why a request (or, on the client side, a response) was refused.
///
/// Each variant maps to the HTTP status the server answers with
/// ([`HttpError::status`]) and a short label for metrics ([`HttpError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 431: no complete head within `max_header_bytes`.
    HeaderTooLarge,
    /// 431: more than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// 400: not valid HTTP/1.x (the text says what).
    Malformed(&'static str),
    /// 405: an upgrade must use GET.
    MethodNotAllowed,
    /// 400: an upgrade must use HTTP/1.1.
    BadHttpVersion,
    /// 400: an upgrade needs a non-empty `Host`.
    MissingHost,
    /// 400: the `Upgrade` header lacks the `websocket` token.
    BadUpgradeHeader,
    /// 400: the `Connection` header lacks the `upgrade` token.
    BadConnectionHeader,
    /// 426: `Sec-WebSocket-Version` is missing or not `13`.
    UnsupportedVersion,
    /// 400: `Sec-WebSocket-Key` is missing or not base64 of 16 bytes.
    BadKey,
    /// 403: the Origin is not allowed (see [`origin_allowed`]).
    OriginForbidden,
    /// Client side (502): the server's response is not valid HTTP or violates RFC 6455 §4.1.
    BadResponse(&'static str),
    /// Client side (502): `Sec-WebSocket-Accept` does not match the key sent.
    BadAccept,
}

impl HttpError {
    /// The HTTP status this error is answered with.
    ///
    /// Client-side variants report 502 (the peer answered wrongly); they are never
    /// written to a socket.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Malformed(_)
            | HttpError::BadHttpVersion
            | HttpError::MissingHost
            | HttpError::BadUpgradeHeader
            | HttpError::BadConnectionHeader
            | HttpError::BadKey => 400,
            HttpError::MethodNotAllowed => 405,
            HttpError::UnsupportedVersion => 426,
            HttpError::OriginForbidden => 403,
            HttpError::BadResponse(_) | HttpError::BadAccept => 502,
        }
    }

    /// A short, stable label for metrics and logs (e.g. `bad_key`).
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::HeaderTooLarge => "header_too_large",
            HttpError::TooManyHeaders => "too_many_headers",
            HttpError::Malformed(_) => "malformed",
            HttpError::MethodNotAllowed => "method_not_allowed",
            HttpError::BadHttpVersion => "bad_http_version",
            HttpError::MissingHost => "no_host",
            HttpError::BadUpgradeHeader => "bad_upgrade",
            HttpError::BadConnectionHeader => "bad_connection",
            HttpError::UnsupportedVersion => "bad_ws_version",
            HttpError::BadKey => "bad_key",
            HttpError::OriginForbidden => "origin_forbidden",
            HttpError::BadResponse(_) => "bad_response",
            HttpError::BadAccept => "bad_accept",
        }
    }

    /// A one-line human explanation, used as the response body.
    fn detail(&self) -> &'static str {
        match self {
            HttpError::HeaderTooLarge => "request header too large",
            HttpError::TooManyHeaders => "too many request header fields",
            HttpError::Malformed(what) | HttpError::BadResponse(what) => what,
            HttpError::MethodNotAllowed => "a WebSocket upgrade must use GET",
            HttpError::BadHttpVersion => "a WebSocket upgrade must use HTTP/1.1",
            HttpError::MissingHost => "missing Host header",
            HttpError::BadUpgradeHeader => "Upgrade header must contain websocket",
            HttpError::BadConnectionHeader => "Connection header must contain upgrade",
            HttpError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HttpError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HttpError::OriginForbidden => "origin not allowed",
            HttpError::BadAccept => "Sec-WebSocket-Accept does not match the key",
        }
    }

    /// Append the complete error response (status, headers, plain-text body) to `out`.
    ///
    /// 426 carries `Sec-WebSocket-Version: 13` so the client knows what to retry
    /// with (RFC 6455 §4.4); 405 carries `Allow: GET`.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let detail = self.detail();
        let extra: &[(&str, &str)] = match self {
            HttpError::UnsupportedVersion => {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            }
            HttpError::MethodNotAllowed => &[("Allow", "GET")],
            _ => &[],
        };
        write_head(out, self.status(), TEXT_PLAIN, extra, detail.len() + 1);
        out.extend_from_slice(detail.as_bytes());
        out.push(b'\n');
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.detail())
    }
}

impl std::error::Error for HttpError {}

/// A parsed HTTP/1.x request head, borrowing from the caller's buffer.
///
/// Header names are matched case-insensitively. Headers that may legitimately
/// repeat are folded into the flags (`upgrade_websocket`, `connection_upgrade`);
/// headers that must not repeat (`Host`, `Origin`, `Sec-WebSocket-Key`,
/// `Sec-WebSocket-Version`) make the request malformed when they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'b> {
    /// Bytes of the head including the final blank line; `buf[len..]` are the
    /// first frames and must be handed to the frame receiver.
    pub len: usize,
    /// The method token as sent (`GET`, `POST`, ...).
    pub method: &'b str,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The request target before `?`.
    pub path: &'b str,
    /// The request target after the first `?`, or `""`.
    pub query: &'b str,
    /// The `Host` header.
    pub host: Option<&'b str>,
    /// The `Origin` header (browsers send it; other clients usually do not).
    pub origin: Option<&'b str>,
    /// The last `X-Forwarded-For` header, raw: the last one is the one added by the
    /// proxy closest to this server, the only part a deployment can trust.
    pub forwarded_for: Option<&'b str>,
    /// The first `Upgrade` header, raw.
    pub upgrade: Option<&'b str>,
    /// True when any `Upgrade` header lists the `websocket` token.
    pub upgrade_websocket: bool,
    /// True when any `Connection` header lists the `upgrade` token.
    pub connection_upgrade: bool,
    /// The `Sec-WebSocket-Version` header, raw.
    pub ws_version: Option<&'b str>,
    /// The `Sec-WebSocket-Key` header, raw.
    pub ws_key: Option<&'b str>,
    /// The first `Sec-WebSocket-Protocol` header, raw. Later ones are ignored: the
    /// server then chooses among fewer offers, which is never wrong.
    pub ws_protocol: Option<&'b str>,
    /// The first `Sec-WebSocket-Extensions` header, raw. Later ones are
    /// ignored, as for the protocol: fewer offers to choose from.
    pub ws_extensions: Option<&'b str>,
}

/// What a valid upgrade request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade<'b> {
    /// The `Sec-WebSocket-Key`, already validated and trimmed; pass it to
    /// [`write_upgrade_response`].
    pub key: &'b str,
    /// The raw `Sec-WebSocket-Protocol` offer (comma list), or `""`; see [`choose_protocol`].
    pub protocols: &'b str,
    /// The raw `Sec-WebSocket-Extensions` offer, or `""`; see
    /// [`crate::ws::deflate::negotiate`].
    pub extensions: &'b str,
}

/// Parse an HTTP/1.x request head from `buf`, the bytes received so far.
///
/// Returns [`Status::Partial`] until the blank line ending the head has arrived;
/// call again with the same bytes plus the new ones (any chunking gives the same
/// result). Once `buf` holds `max_header_bytes` bytes without a complete head,
/// the answer is [`HttpError::HeaderTooLarge`]: the verdict depends only on the
/// first `max_header_bytes` bytes, so a complete head never turns into an error
/// when more bytes arrive.
pub fn parse_request(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Status<Request<'_>>, HttpError> {
    let (window, at_limit) = limit_window(buf, max_header_bytes);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if at_limit => return Err(HttpError::HeaderTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Err(e) => return Err(map_httparse_error(e)),
    };
    // httparse fills these three on Complete; the fallbacks only keep this
    // function total.
    let method = req.method.unwrap_or("");
    let version = req.version.unwrap_or(0);
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut out = Request {
        len,
        method,
        version,
        path,
        query,
        host: None,
        origin: None,
        forwarded_for: None,
        upgrade: None,
        upgrade_websocket: false,
        connection_upgrade: false,
        ws_version: None,
        ws_key: None,
        ws_protocol: None,
        ws_extensions: None,
    };
    for h in req.headers.iter() {
        let name = h.name;
        // Dispatch on length first: most headers are skipped with one comparison.
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => {
                set_once(&mut out.host, h.value, "duplicate Host header")?
            }
            6 if name.eq_ignore_ascii_case("origin") => {
                set_once(&mut out.origin, h.value, "duplicate Origin header")?
            }
            7 if name.eq_ignore_ascii_case("upgrade") => {
                let v = header_str(h.value)?;
                out.upgrade.get_or_insert(v);
                out.upgrade_websocket |= has_token(v, "websocket");
            }
            10 if name.eq_ignore_ascii_case("connection") => {
                out.connection_upgrade |= has_token(header_str(h.value)?, "upgrade");
            }
            15 if name.eq_ignore_ascii_case("x-forwarded-for") => {
                out.forwarded_for = Some(header_str(h.value)?);
            }
            17 if name.eq_ignore_ascii_case("sec-websocket-key") => set_once(
                &mut out.ws_key,
                h.value,
                "duplicate Sec-WebSocket-Key header",
            )?,
            21 if name.eq_ignore_ascii_case("sec-websocket-version") => set_once(
                &mut out.ws_version,
                h.value,
                "duplicate Sec-WebSocket-Version header",
            )?,
            22 if name.eq_ignore_ascii_case("sec-websocket-protocol") => {
                let v = header_str(h.value)?;
                out.ws_protocol.get_or_insert(v);
            }
            24 if name.eq_ignore_ascii_case("sec-websocket-extensions") => {
                let v = header_str(h.value)?;
                out.ws_extensions.get_or_insert(v);
            }
            _ => {}
        }
    }
    Ok(Status::Complete(out))
}

impl<'b> Request<'b> {
    /// True when the request asks for a WebSocket (an `Upgrade` header is present
    /// or `Connection` has the `upgrade` token), so the server validates it with
    /// [`Request::websocket`] instead of serving it as plain HTTP.
    pub fn wants_upgrade(&self) -> bool {
        self.upgrade.is_some() || self.connection_upgrade
    }

    /// Validate a WebSocket upgrade (RFC 6455 §4.2.1), checking in this order:
    /// GET (else 405), HTTP/1.1 (400), a non-empty `Host` (400), `Upgrade` with the
    /// `websocket` token (400), `Connection` with the `upgrade` token (400),
    /// `Sec-WebSocket-Version: 13` (426), and a `Sec-WebSocket-Key` that is base64
    /// of exactly 16 bytes (400).
    pub fn websocket(&self) -> Result<Upgrade<'b>, HttpError> {
        if self.method != "GET" {
            return Err(HttpError::MethodNotAllowed);
        }
        if self.version != 1 {
            return Err(HttpError::BadHttpVersion);
        }
        if self.host.map_or(true, |h| h.trim().is_empty()) {
            return Err(HttpError::MissingHost);
        }
        if !self.upgrade_websocket {
            return Err(HttpError::BadUpgradeHeader);
        }
        if !self.connection_upgrade {
            return Err(HttpError::BadConnectionHeader);
        }
        if self.ws_version.map(trim_ows) != Some("13") {
            return Err(HttpError::UnsupportedVersion);
        }
        let key = self.ws_key.map(trim_ows).ok_or(HttpError::BadKey)?;
        if !valid_key(key) {
            return Err(HttpError::BadKey);
        }
        Ok(Upgrade {
            key,
            protocols: self.ws_protocol.map_or("", trim_ows),
            extensions: self.ws_extensions.map_or("", trim_ows),
        })
    }

    /// The raw value of query parameter `name` (`a=b&c=d`); the first occurrence
    /// wins, a parameter without `=` has the value `""`. Values are not
    /// percent-decoded: the nick and room charsets never need it, and a value
    /// containing `%` simply fails their validation.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        // A byte scan rather than `split('&')` + `split_once('=')`: an upgrade
        // asks for up to seven parameters, and the two char searchers cost
        // ~290 instructions per call on a six-byte query (callgrind), a tenth
        // of the server's user-space work per chat upgrade. Same answers:
        // `query_param_matches_split` checks it against the split form.
        if name.as_bytes().contains(&b'=') {
            // A key ends at its first `=`, so it never contains one.
            return None;
        }
        let mut rest = self.query;
        while !rest.is_empty() {
            let end = rest.bytes().position(|b| b == b'&').unwrap_or(rest.len());
            let pair = &rest[..end];
            if let Some(after) = pair.strip_prefix(name).filter(|_| !pair.is_empty()) {
                // `name` is the whole key: the pair ends or its `=` follows.
                if after.is_empty() {
                    return Some("");
                }
                if let Some(v) = after.strip_prefix('=') {
                    return Some(v);
                }
            }
            rest = rest.get(end + 1..).unwrap_or("");
        }
        None
    }
}

/// Pick the subprotocol to confirm: the first entry of the client's comma-separated
/// `offered` list (its order is its preference) that appears in `supported`.
/// Names are compared exactly: RFC 6455 subprotocol tokens are case-sensitive.
pub fn choose_protocol<'a>(offered: &'a str, supported: &[&str]) -> Option<&'a str> {
    offered
        .split(',')
        .map(trim_ows)
        .find(|p| !p.is_empty() && supported.contains(p))
}

/// The Origin policy: no `Origin` (a non-browser client) is allowed; so is an
/// Origin whose `host[:port]` equals `Host`, and one listed in `allow`.
///
/// `allow` entries may be full origins (`https://chat.example.com`, which must
/// match scheme too), bare hosts (`chat.example.com[:port]`, any of http/https),
/// the literal Origin value (e.g. `null`), or `*` for everything. Comparisons are
/// case-insensitive, and a default port (`:80` for http, `:443` for https) is
/// the same as none.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allow: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    let (scheme, authority) = split_origin(origin);
    if let Some(host) = host {
        let host = strip_default_port(host.trim(), None);
        if scheme.is_some() && authority.eq_ignore_ascii_case(host) {
            return true;
        }
        // Browsers always send a scheme; some load tools (tsung) send a bare
        // host. Equal to Host, it is as same-origin as it gets.
        if scheme.is_none()
            && !origin.contains("://")
            && origin != "null"
            && origin.eq_ignore_ascii_case(host)
        {
            return true;
        }
    }
    allow.iter().any(|entry| {
        let entry = entry.trim();
        if entry == "*" || entry.eq_ignore_ascii_case(origin) {
            return true;
        }
        let Some(scheme) = scheme else {
            // Only the literal comparison above applies to non-http(s) origins.
            return false;
        };
        match split_origin(entry) {
            (Some(entry_scheme), entry_authority) => {
                entry_scheme == scheme && entry_authority.eq_ignore_ascii_case(authority)
            }
            (None, _) if entry.contains("://") => false,
            (None, bare) => strip_default_port(bare, Some(scheme)).eq_ignore_ascii_case(authority),
        }
    })
}

/// `Sec-WebSocket-Accept` for `key`: base64(sha1(key + GUID)) (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut buf = [0u8; ACCEPT_KEY_LEN];
    accept_key_into(key, &mut buf).to_owned()
}

/// [`accept_key`] into a caller's stack buffer, for the allocation-free path.
pub fn accept_key_into<'o>(key: &str, out: &'o mut [u8; ACCEPT_KEY_LEN]) -> &'o str {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    let digest = sha.finalize();
    // 20 bytes always encode to exactly 28 base64 characters, so this cannot fail;
    // on the impossible error the buffer stays zeroed rather than panicking.
    let n = STANDARD.encode_slice(digest, &mut out[..]).unwrap_or(0);
    std::str::from_utf8(&out[..n]).unwrap_or("")
}

/// Append `HTTP/1.1 101 Switching Protocols` with `Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept` and, when `protocol` is given, `Sec-WebSocket-Protocol`.
pub fn write_upgrade_response(out: &mut Vec<u8>, key: &str, protocol: Option<&str>) {
    write_upgrade_response_ext(out, key, protocol, None);
}

/// [`write_upgrade_response`] confirming `extensions` (a
/// `Sec-WebSocket-Extensions` value) when given.
pub fn write_upgrade_response_ext(
    out: &mut Vec<u8>,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    let mut accept = [0u8; ACCEPT_KEY_LEN];
    let accept = accept_key_into(key, &mut accept);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    out.extend_from_slice(b"\r\n");
}

/// Append a complete non-upgrade response: status line, `Content-Type` (omitted
/// when empty), `extra_headers`, `Content-Length`, `Connection: close`, body.
///
/// The server closes after it, which is why `Connection: close` is always sent.
/// CR and LF are dropped from header names and values so a caller-supplied value
/// can never split the response.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) {
    write_head(out, status, content_type, extra_headers, body.len());
    out.extend_from_slice(body);
}

/// The standard reason phrase for `status`, or `""` for one not used here
/// (an empty reason phrase is valid HTTP/1.1).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 pseudo-random bytes.
///
/// The key only has to differ between connections (it proves the server speaks
/// WebSocket, it is not a secret): the thread's generator of [`crate::rng`].
pub fn generate_key() -> String {
    let mut bytes = [0u8; 16];
    crate::rng::with_thread_rng(|r| r.fill(&mut bytes));
    STANDARD.encode(bytes)
}

/// Append a client upgrade request for `path_and_query` (`/` when empty) on `host`.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    path_and_query: &str,
    key: &str,
    origin: Option<&str>,
) {
    write_client_request_ext(out, host, path_and_query, key, origin, None);
}

/// [`write_client_request`] offering `extensions` (e.g.
/// [`crate::ws::deflate::CLIENT_OFFER`]) when given.
pub fn write_client_request_ext(
    out: &mut Vec<u8>,
    host: &str,
    path_and_query: &str,
    key: &str,
    origin: Option<&str>,
    extensions: Option<&str>,
) {
    out.extend_from_slice(b"GET ");
    if path_and_query.is_empty() {
        out.push(b'/');
    } else {
        // A space would end the request target early; CR/LF would end the line.
        push_clean(out, path_and_query, |b| b != b' ');
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, "Host", host);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(out, "Sec-WebSocket-Key", key);
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    if let Some(origin) = origin {
        push_header(out, "Origin", origin);
    }
    if let Some(e) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    out.extend_from_slice(b"\r\n");
}

/// Parse the server's answer to [`write_client_request`].
///
/// `Complete((status, head_len))` once the head is in; `buf[head_len..]` are
/// the first frames (101) or the body (other statuses, which the caller reports,
/// e.g. a 403). For 101 the response must carry `Upgrade: websocket`,
/// `Connection: upgrade`, the `Sec-WebSocket-Accept` matching `key`, and no
/// extension or subprotocol (none was offered), per RFC 6455 §4.1.
pub fn parse_response(
    buf: &[u8],
    key: &str,
    max_header_bytes: usize,
) -> Result<Status<(u16, usize)>, HttpError> {
    Ok(
        match parse_response_ext(buf, key, max_header_bytes, false)? {
            Status::Complete((code, len, _)) => Status::Complete((code, len)),
            Status::Partial => Status::Partial,
        },
    )
}

/// [`parse_response`] after a request that offered
/// [`crate::ws::deflate::CLIENT_OFFER`] when `offered_deflate`: a 101 may then
/// confirm it (checked by [`crate::ws::deflate::check_answer`]), and the
/// agreement is the third element.
pub fn parse_response_ext(
    buf: &[u8],
    key: &str,
    max_header_bytes: usize,
    offered_deflate: bool,
) -> Result<Status<(u16, usize, Option<crate::ws::deflate::Agreement>)>, HttpError> {
    let (window, at_limit) = limit_window(buf, max_header_bytes);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if at_limit => return Err(HttpError::HeaderTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(_) => return Err(HttpError::BadResponse("malformed HTTP response")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Ok(Status::Complete((code, len, None)));
    }
    let mut deflate = None;
    let (mut upgrade, mut connection, mut accept_ok, mut accept_seen) =
        (false, false, false, false);
    let mut expected = [0u8; ACCEPT_KEY_LEN];
    let expected = accept_key_into(key, &mut expected);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::BadResponse("non-UTF-8 header value"))?;
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            // A repeated Accept header is ambiguous; only a single matching one passes.
            accept_ok = !accept_seen && trim_ows(value) == expected;
            accept_seen = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if !offered_deflate || deflate.is_some() {
                return Err(HttpError::BadResponse("unrequested extension in 101"));
            }
            deflate =
                Some(crate::ws::deflate::check_answer(value).map_err(HttpError::BadResponse)?);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            return Err(HttpError::BadResponse("unrequested subprotocol in 101"));
        }
    }
    if !upgrade {
        return Err(HttpError::BadResponse("101 without Upgrade: websocket"));
    }
    if !connection {
        return Err(HttpError::BadResponse("101 without Connection: upgrade"));
    }
    if !accept_ok {
        return Err(HttpError::BadAccept);
    }
    Ok(Status::Complete((code, len, deflate)))
}

/// The part of `buf` the parser may look at, and whether that part is already
/// the whole allowance (so "incomplete" means "too large").
fn limit_window(buf: &[u8], max: usize) -> (&[u8], bool) {
    if buf.len() >= max {
        (&buf[..max], true)
    } else {
        (buf, false)
    }
}

fn map_httparse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        httparse::Error::Status => HttpError::Malformed("invalid status"),
        httparse::Error::Token => HttpError::Malformed("invalid token in request line"),
        httparse::Error::Version => HttpError::Malformed("invalid HTTP version"),
    }
}

/// Header values are bytes in HTTP; the ones this module reads must be UTF-8.
fn header_str(value: &[u8]) -> Result<&str, HttpError> {
    std::str::from_utf8(value).map_err(|_| HttpError::Malformed("non-UTF-8 header value"))
}

fn set_once<'b>(
    slot: &mut Option<&'b str>,
    value: &'b [u8],
    dup: &'static str,
) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::Malformed(dup));
    }
    *slot = Some(header_str(value)?);
    Ok(())
}

/// Strip HTTP optional whitespace (SP / HTAB) at both ends.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// True when the comma-separated `list` contains `token` (ASCII case-insensitive).
fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// A key is 24 base64 characters decoding to 16 bytes. The standard engine
/// rejects non-canonical padding and stray bits, so only true 16-byte values pass.
fn valid_key(key: &str) -> bool {
    let mut raw = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut raw) == Ok(16)
}

/// Split `http://a` / `https://a` (scheme case-insensitive, a trailing `/`
/// tolerated) into the lower-case scheme and the authority without a default
/// port. Anything else has no recognised scheme and is returned whole.
fn split_origin(s: &str) -> (Option<&'static str>, &str) {
    for scheme in ["http", "https"] {
        // Compare bytes: an Origin may hold any UTF-8, so string slicing at a
        // fixed offset could split a character.
        let b = s.as_bytes();
        let n = scheme.len();
        if b.len() >= n + 3
            && b[..n].eq_ignore_ascii_case(scheme.as_bytes())
            && &b[n..n + 3] == b"://"
        {
            // Bytes 0..n+3 are ASCII, so n + 3 is a char boundary.
            let authority = s.get(n + 3..).unwrap_or("").trim_end_matches('/');
            return (Some(scheme), strip_default_port(authority, Some(scheme)));
        }
    }
    (None, s)
}

/// Drop `:80` / `:443` when it is the default for `scheme` (either one when
/// the scheme is unknown, as for a `Host` header behind a TLS terminator).
fn strip_default_port<'a>(authority: &'a str, scheme: Option<&str>) -> &'a str {
    let port = match scheme {
        Some("http") => ":80",
        Some("https") => ":443",
        Some(_) => return authority,
        None if authority.ends_with(":80") => ":80",
        None => ":443",
    };
    authority.strip_suffix(port).unwrap_or(authority)
}

/// Status line, headers and blank line of a response that closes the connection.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    content_length: usize,
) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    if !content_type.is_empty() {
        push_header(out, "Content-Type", content_type);
    }
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    let _ = write!(
        out,
        "Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    );
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_clean(out, name, |b| b != b':');
    out.extend_from_slice(b": ");
    push_clean(out, value, |_| true);
    out.extend_from_slice(b"\r\n");
}

/// Append `s` without CR/LF (and without bytes `keep` rejects), so no value can
/// inject a header line. The common clean case is one copy.
fn push_clean(out: &mut Vec<u8>, s: &str, keep: impl Fn(u8) -> bool) {
    let ok = |b: u8| b != b'\r' && b != b'\n' && keep(b);
    if s.bytes().all(ok) {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(s.bytes().filter(|&b| ok(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const LIMIT: usize = DEFAULT_MAX_HEADER_BYTES;

    /// The RFC 6455 §1.3 sample request plus a few browser-like headers.
    fn sample() -> Vec<u8> {
        b"GET /chat?nick=ann&room=dev HTTP/1.1\r\n\
          Host: server.example.com\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Origin: http://example.com\r\n\
          Sec-WebSocket-Protocol: chat, superchat\r\n\
          Sec-WebSocket-Version: 13\r\n\
          \r\n"
            .to_vec()
    }

    /// A request built from `headers` (name, value) lines after a GET line.
    fn request_with(first_line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut s = format!("{first_line}\r\n");
        for (n, v) in headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn valid_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse_request(buf, LIMIT) {
            Ok(Status::Complete(r)) => r,
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    /// Validate the GET request built from `headers`; returns the status on error.
    fn validate(headers: &[(&str, &str)]) -> Result<(), u16> {
        let buf = request_with("GET /ws HTTP/1.1", headers);
        let req = complete(&buf);
        req.websocket().map(|_| ()).map_err(|e| e.status())
    }

    fn with(name: &str, value: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
        let mut h: Vec<_> = valid_headers()
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
            .collect();
        if let Some(v) = value {
            let n = valid_headers()
                .into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map_or("X-Unknown", |(n, _)| n);
            h.push((n, v));
        }
        h
    }

    #[test]
    fn rfc_sample_accept_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut buf = [0u8; ACCEPT_KEY_LEN];
        assert_eq!(
            accept_key_into(KEY, &mut buf),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_rfc_sample_fields() {
        let buf = sample();
        let req = complete(&buf);
        assert_eq!(req.len, buf.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.version, 1);
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query, "nick=ann&room=dev");
        assert_eq!(req.host, Some("server.example.com"));
        assert_eq!(req.origin, Some("http://example.com"));
        assert_eq!(req.forwarded_for, None);
        assert!(req.wants_upgrade());
        let up = req.websocket().unwrap();
        assert_eq!(up.key, KEY);
        assert_eq!(up.protocols, "chat, superchat");
        assert_eq!(
            choose_protocol(up.protocols, &["superchat"]),
            Some("superchat")
        );
    }

    #[test]
    fn upgrade_response_matches_rfc() {
        let mut out = Vec::new();
        write_upgrade_response(&mut out, KEY, Some("chat"));
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
        out.clear();
        write_upgrade_response(&mut out, KEY, None);
        assert!(!String::from_utf8(out)
            .unwrap()
            .contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn valid_upgrade_passes() {
        assert_eq!(validate(&valid_headers()), Ok(()));
    }

    #[test]
    fn method_must_be_get() {
        let buf = request_with("POST /ws HTTP/1.1", &valid_headers());
        assert_eq!(complete(&buf).websocket(), Err(HttpError::MethodNotAllowed));
        assert_eq!(HttpError::MethodNotAllowed.status(), 405);
        // Methods are case-sensitive: "get" is not GET.
        let buf = request_with("get /ws HTTP/1.1", &valid_headers());
        assert_eq!(complete(&buf).websocket().unwrap_err().status(), 405);
    }

    #[test]
    fn http_1_0_is_400() {
        let buf = request_with("GET /ws HTTP/1.0", &valid_headers());
        let req = complete(&buf);
        assert_eq!(req.version, 0);
        assert_eq!(req.websocket(), Err(HttpError::BadHttpVersion));
        assert_eq!(HttpError::BadHttpVersion.status(), 400);
    }

    #[test]
    fn host_required() {
        assert_eq!(validate(&with("Host", None)), Err(400));
        assert_eq!(validate(&with("Host", Some(""))), Err(400));
        let buf = request_with("GET /ws HTTP/1.1", &with("Host", None));
        assert_eq!(complete(&buf).websocket(), Err(HttpError::MissingHost));
    }

    #[test]
    fn upgrade_token_required() {
        assert_eq!(validate(&with("Upgrade", None)), Err(400));
        assert_eq!(validate(&with("Upgrade", Some("h2c"))), Err(400));
        assert_eq!(validate(&with("Upgrade", Some("WebSocket"))), Ok(()));
        assert_eq!(validate(&with("Upgrade", Some("h2c, WEBSOCKET"))), Ok(()));
        let buf = request_with("GET /ws HTTP/1.1", &with("Upgrade", Some("h2c")));
        assert_eq!(complete(&buf).websocket(), Err(HttpError::BadUpgradeHeader));
    }

    #[test]
    fn connection_token_required() {
        assert_eq!(validate(&with("Connection", None)), Err(400));
        assert_eq!(validate(&with("Connection", Some("keep-alive"))), Err(400));
        // A substring is not a token.
        assert_eq!(validate(&with("Connection", Some("upgrades"))), Err(400));
        assert_eq!(
            validate(&with("Connection", Some("keep-alive, Upgrade"))),
            Ok(())
        );
        assert_eq!(
            validate(&with("Connection", Some("keep-alive,upgrade"))),
            Ok(())
        );
        assert_eq!(validate(&with("Connection", Some("UPGRADE"))), Ok(()));
        assert_eq!(validate(&with("Connection", Some(" \tupgrade\t "))), Ok(()));
        let buf = request_with("GET /ws HTTP/1.1", &with("Connection", Some("close")));
        assert_eq!(
            complete(&buf).websocket(),
            Err(HttpError::BadConnectionHeader)
        );
    }

    #[test]
    fn connection_token_in_repeated_headers() {
        let mut h = with("Connection", Some("keep-alive"));
        h.push(("Connection", "Upgrade"));
        assert_eq!(validate(&h), Ok(()));
    }

    #[test]
    fn version_must_be_13_else_426() {
        for v in [
            None,
            Some("8"),
            Some("12"),
            Some("14"),
            Some("13, 8"),
            Some(""),
        ] {
            assert_eq!(
                validate(&with("Sec-WebSocket-Version", v)),
                Err(426),
                "{v:?}"
            );
        }
        assert_eq!(
            validate(&with("Sec-WebSocket-Version", Some(" 13 "))),
            Ok(())
        );
        let mut out = Vec::new();
        HttpError::UnsupportedVersion.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        for k in [
            None,
            Some(""),
            Some("dGhlIHNhbXBsZSBub25jZQ"),   // no padding
            Some("dGhlIHNhbXBsZSBub25jZXg="), // 17 bytes
            Some("dGhlIHNhbXBsZSBub25j"),     // 15 bytes
            Some("dGhlIHNhbXBsZSBub25jZR=="), // non-zero trailing bits
            Some("dGhlIHNhbXBsZSBub25jZQ=!"),
            Some("****************QQQQQQ=="),
        ] {
            assert_eq!(validate(&with("Sec-WebSocket-Key", k)), Err(400), "{k:?}");
        }
        let buf = request_with("GET /ws HTTP/1.1", &with("Sec-WebSocket-Key", Some("abc")));
        assert_eq!(complete(&buf).websocket(), Err(HttpError::BadKey));
        assert_eq!(
            validate(&with("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAAAA=="))),
            Ok(())
        );
    }

    #[test]
    fn duplicate_singleton_headers_are_malformed() {
        for name in [
            "Host",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Origin",
        ] {
            let mut h = valid_headers();
            h.push((name, "x"));
            h.push((name, "y"));
            let buf = request_with("GET /ws HTTP/1.1", &h);
            let err = parse_request(&buf, LIMIT).unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{name}: {err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn header_names_case_insensitive() {
        let buf = b"GET /ws HTTP/1.1\r\nhOsT: a\r\nUPGRADE: WebSocket\r\nconnection: KEEP-ALIVE, UPGRADE\r\n\
                    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\
                    x-forwarded-for: 10.0.0.1\r\nORIGIN: http://a\r\n\r\n";
        let req = complete(buf);
        assert_eq!(req.host, Some("a"));
        assert_eq!(req.forwarded_for, Some("10.0.0.1"));
        assert_eq!(req.origin, Some("http://a"));
        assert!(req.websocket().is_ok());
    }

    #[test]
    fn last_forwarded_for_wins() {
        let buf = request_with(
            "GET / HTTP/1.1",
            &[
                ("Host", "a"),
                ("X-Forwarded-For", "1.1.1.1"),
                ("X-Forwarded-For", "2.2.2.2"),
            ],
        );
        assert_eq!(complete(&buf).forwarded_for, Some("2.2.2.2"));
    }

    #[test]
    fn plain_get_is_not_an_upgrade() {
        let buf = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        let req = complete(buf);
        assert!(!req.wants_upgrade());
        assert_eq!(req.path, "/healthz");
        assert_eq!(req.query, "");
        assert_eq!(req.websocket(), Err(HttpError::BadUpgradeHeader));
        let buf = b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n";
        assert!(complete(buf).wants_upgrade());
    }

    #[test]
    fn one_byte_at_a_time_equals_all_at_once() {
        let mut buf = sample();
        let head = buf.len();
        buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, b'x']);
        let whole = complete(&buf);
        for end in 0..=buf.len() {
            let r = parse_request(&buf[..end], LIMIT).unwrap();
            if end < head {
                assert_eq!(r, Status::Partial, "at {end}");
            } else {
                assert_eq!(r, Status::Complete(whole), "at {end}");
            }
        }
    }

    #[test]
    fn pipelined_frame_bytes_follow_len() {
        let mut buf = sample();
        let frame = [0x81u8, 0x82, 9, 9, 9, 9, b'h' ^ 9, b'i' ^ 9];
        buf.extend_from_slice(&frame);
        let req = complete(&buf);
        assert_eq!(&buf[req.len..], &frame);
    }

    #[test]
    fn size_limit() {
        // Incomplete with the limit reached: 431 at once, not after more bytes.
        let junk = b"GET / HTTP/1.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(parse_request(junk, 64), Ok(Status::Partial));
        assert_eq!(
            parse_request(&junk[..40], 40),
            Err(HttpError::HeaderTooLarge)
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        big.resize(LIMIT + 10, b'a');
        assert_eq!(parse_request(&big, LIMIT), Err(HttpError::HeaderTooLarge));
        assert_eq!(HttpError::HeaderTooLarge.status(), 431);
        // A complete head longer than the limit is refused too.
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&big, LIMIT), Err(HttpError::HeaderTooLarge));
        // A head of exactly the limit fits; one byte less does not.
        let buf = sample();
        assert!(matches!(
            parse_request(&buf, buf.len()),
            Ok(Status::Complete(_))
        ));
        assert_eq!(
            parse_request(&buf, buf.len() - 1),
            Err(HttpError::HeaderTooLarge)
        );
        // Frame bytes after a head that fits do not count against the limit.
        let mut piped = buf.clone();
        piped.extend_from_slice(&[0u8; 100]);
        assert!(matches!(
            parse_request(&piped, buf.len()),
            Ok(Status::Complete(_))
        ));
    }

    #[test]
    fn header_count_limit() {
        let names: Vec<String> = (0..MAX_HEADERS + 1).map(|i| format!("X-H{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let buf = request_with("GET / HTTP/1.1", &many);
        let err = parse_request(&buf, LIMIT).unwrap_err();
        assert_eq!(err, HttpError::TooManyHeaders);
        assert_eq!(err.status(), 431);
        let buf = request_with("GET / HTTP/1.1", &many[..MAX_HEADERS]);
        assert!(matches!(
            parse_request(&buf, LIMIT),
            Ok(Status::Complete(_))
        ));
    }

    #[test]
    fn malformed_is_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n",
            b"GET\x00/ HTTP/1.1\r\n\r\n",
        ] {
            let err = parse_request(bad, LIMIT).unwrap_err();
            assert_eq!(err.status(), 400, "{bad:?}: {err:?}");
            assert_eq!(err.reason(), "malformed");
        }
    }

    #[test]
    fn query_params() {
        let buf = b"GET /ws?nick=ann&room=dev&nick=bob&flag&pct=a%20b&&=x HTTP/1.1\r\n\r\n";
        let req = complete(buf);
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("nick"), Some("ann"));
        assert_eq!(req.query_param("room"), Some("dev"));
        assert_eq!(req.query_param("flag"), Some(""));
        assert_eq!(req.query_param("pct"), Some("a%20b"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_param(""), Some("x"));
        let buf = b"GET /ws HTTP/1.1\r\n\r\n";
        assert_eq!(complete(buf).query_param("nick"), None);
    }

    #[test]
    fn choose_protocol_order_and_exactness() {
        assert_eq!(choose_protocol("a, b", &["b", "a"]), Some("a"));
        assert_eq!(choose_protocol("x,\tb ", &["b"]), Some("b"));
        assert_eq!(choose_protocol("Chat", &["chat"]), None);
        assert_eq!(choose_protocol("", &["chat"]), None);
        assert_eq!(choose_protocol(" , ", &[""]), None);
    }

    #[test]
    fn origin_policy() {
        let none: Vec<String> = Vec::new();
        let allow = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Non-browser clients send no Origin.
        assert!(origin_allowed(None, Some("a.com"), &none));
        assert!(origin_allowed(None, None, &none));
        // Same host, any case, with or without default port.
        assert!(origin_allowed(
            Some("http://chat.example.com:9000"),
            Some("chat.example.com:9000"),
            &none
        ));
        assert!(origin_allowed(
            Some("HTTPS://Chat.Example.com"),
            Some("chat.example.COM"),
            &none
        ));
        assert!(origin_allowed(
            Some("https://chat.example.com"),
            Some("chat.example.com:443"),
            &none
        ));
        assert!(origin_allowed(
            Some("http://chat.example.com:80/"),
            Some("chat.example.com"),
            &none
        ));
        // Different host or port.
        assert!(!origin_allowed(
            Some("http://evil.com"),
            Some("chat.example.com"),
            &none
        ));
        assert!(!origin_allowed(
            Some("http://chat.example.com:9001"),
            Some("chat.example.com:9000"),
            &none
        ));
        assert!(!origin_allowed(
            Some("http://chat.example.com"),
            None,
            &none
        ));
        assert!(!origin_allowed(Some("null"), Some("null"), &none));
        // A bare host (tsung's default) equal to Host is same-origin; another is not.
        assert!(origin_allowed(
            Some("127.0.0.1:9000"),
            Some("127.0.0.1:9000"),
            &none
        ));
        assert!(!origin_allowed(
            Some("evil.com"),
            Some("127.0.0.1:9000"),
            &none
        ));
        assert!(!origin_allowed(Some("ftp://a.com"), Some("a.com"), &none));
        // Allow list: full origins (scheme must match), bare hosts, literals, "*".
        let list = allow(&["https://app.example.com", "other.example.com:8443", "null"]);
        assert!(origin_allowed(
            Some("https://APP.example.com"),
            Some("x"),
            &list
        ));
        assert!(origin_allowed(
            Some("https://app.example.com:443"),
            Some("x"),
            &list
        ));
        assert!(!origin_allowed(
            Some("http://app.example.com"),
            Some("x"),
            &list
        ));
        assert!(origin_allowed(
            Some("http://other.example.com:8443"),
            Some("x"),
            &list
        ));
        assert!(origin_allowed(
            Some("https://other.example.com:8443"),
            Some("x"),
            &list
        ));
        assert!(!origin_allowed(
            Some("https://other.example.com"),
            Some("x"),
            &list
        ));
        assert!(origin_allowed(Some("null"), Some("x"), &list));
        assert!(!origin_allowed(Some("https://evil.com"), Some("x"), &list));
        assert!(origin_allowed(
            Some("https://evil.com"),
            Some("x"),
            &allow(&["*"])
        ));
        assert!(origin_allowed(Some("\u{e9}://x"), None, &allow(&["*"])));
        assert!(!origin_allowed(
            Some("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
            Some("x"),
            &none
        ));
    }

    #[test]
    fn write_response_format() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", &[("X-A", "1")], b"ok\n");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 3\r\n\
              Connection: close\r\n\r\nok\n"
        );
        for (status, phrase) in [
            (101, "Switching Protocols"),
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (426, "Upgrade Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason_phrase(status), phrase);
        }
        // Header injection is impossible.
        out.clear();
        write_response(&mut out, 404, "", &[("X-B", "v\r\nSet-Cookie: x")], b"");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-B: vSet-Cookie: x\r\n"), "{text}");
        assert!(!text.contains("Content-Type"));
    }

    #[test]
    fn error_responses_are_complete_http() {
        let all = [
            HttpError::HeaderTooLarge,
            HttpError::TooManyHeaders,
            HttpError::Malformed("x"),
            HttpError::MethodNotAllowed,
            HttpError::BadHttpVersion,
            HttpError::MissingHost,
            HttpError::BadUpgradeHeader,
            HttpError::BadConnectionHeader,
            HttpError::UnsupportedVersion,
            HttpError::BadKey,
            HttpError::OriginForbidden,
        ];
        for e in all {
            let mut out = Vec::new();
            e.write_response(&mut out);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let head = match resp.parse(&out).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial {e:?}"),
            };
            assert_eq!(resp.code, Some(e.status()));
            assert_eq!(resp.reason, Some(reason_phrase(e.status())));
            let cl = resp
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .unwrap();
            let cl: usize = std::str::from_utf8(cl.value).unwrap().parse().unwrap();
            assert_eq!(cl, out.len() - head);
            assert!(!e.reason().is_empty());
            assert!(e.to_string().starts_with(&e.status().to_string()));
        }
        assert_eq!(HttpError::OriginForbidden.status(), 403);
        let mut out = Vec::new();
        HttpError::MethodNotAllowed.write_response(&mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn client_round_trip() {
        let key = generate_key();
        assert_eq!(key.len(), 24);
        assert!(valid_key(&key));
        assert_ne!(key, generate_key());

        let mut req = Vec::new();
        write_client_request(
            &mut req,
            "127.0.0.1:9000",
            "/ws?nick=ann",
            &key,
            Some("http://127.0.0.1:9000"),
        );
        req.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let parsed = complete(&req);
        assert_eq!(parsed.path, "/ws");
        assert_eq!(parsed.query_param("nick"), Some("ann"));
        assert!(origin_allowed(parsed.origin, parsed.host, &[]));
        let up = parsed.websocket().unwrap();
        assert_eq!(up.key, key);

        let mut resp = Vec::new();
        write_upgrade_response(&mut resp, up.key, None);
        let head = resp.len();
        resp.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        for end in 0..head {
            assert_eq!(
                parse_response(&resp[..end], &key, LIMIT),
                Ok(Status::Partial)
            );
        }
        assert_eq!(
            parse_response(&resp, &key, LIMIT),
            Ok(Status::Complete((101, head)))
        );
        // A different key's accept value is refused.
        let other = generate_key();
        assert_eq!(
            parse_response(&resp, &other, LIMIT),
            Err(HttpError::BadAccept)
        );
        // An empty path becomes "/".
        let mut req = Vec::new();
        write_client_request(&mut req, "h", "", &key, None);
        assert_eq!(complete(&req).path, "/");
        assert_eq!(complete(&req).origin, None);
    }

    #[test]
    fn client_sees_refusals() {
        let key = generate_key();
        let mut resp = Vec::new();
        HttpError::OriginForbidden.write_response(&mut resp);
        let Ok(Status::Complete((403, head))) = parse_response(&resp, &key, LIMIT) else {
            panic!("expected 403");
        };
        assert_eq!(&resp[head..], b"origin not allowed\n");

        let accept = accept_key(&key);
        let bad =
            |extra: &str| format!("HTTP/1.1 101 Switching Protocols\r\n{extra}\r\n").into_bytes();
        let ok_headers = format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
        );
        assert!(matches!(
            parse_response(&bad(&ok_headers), &key, LIMIT),
            Ok(Status::Complete((101, _)))
        ));
        for broken in [
            format!("Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"),
            format!("Upgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n"),
            "Upgrade: websocket\r\nConnection: Upgrade\r\n".to_string(),
            format!("{ok_headers}Sec-WebSocket-Accept: {accept}\r\n"),
            format!("{ok_headers}Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            format!("{ok_headers}Sec-WebSocket-Protocol: chat\r\n"),
        ] {
            assert!(
                parse_response(&bad(&broken), &key, LIMIT).is_err(),
                "{broken}"
            );
        }
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nX: ", &key, 16),
            Err(HttpError::HeaderTooLarge)
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", &key, LIMIT),
            Err(HttpError::BadResponse(_))
        ));
    }

    #[test]
    fn client_request_strips_line_breaks() {
        let mut out = Vec::new();
        write_client_request(&mut out, "h\r\nX: 1", "/a b\r\n", KEY, Some("o\n"));
        let req = complete(&out);
        assert_eq!(req.host, Some("hX: 1"));
        assert_eq!(req.path, "/ab");
        assert_eq!(req.origin, Some("o"));
        assert_eq!(req.len, out.len());
    }

    /// The query lookup as it was written first, the reference for the byte scan.
    fn query_param_by_split<'a>(query: &'a str, name: &str) -> Option<&'a str> {
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            })
    }

    proptest! {
        #[test]
        fn query_param_matches_split(query in "[a-c=&%]{0,16}", name in "[a-c=]{0,3}") {
            let target = format!("/ws?{query}");
            let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            let Ok(Status::Complete(req)) = parse_request(head.as_bytes(), 8192) else {
                return Err(TestCaseError::fail("parse"));
            };
            prop_assert_eq!(req.query_param(&name), query_param_by_split(&query, &name));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any split point gives the same parse: Partial before the head ends, the
        /// same Complete (same len) from there on, whatever follows.
        #[test]
        fn any_split_same_parse(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            split in any::<proptest::sample::Index>(),
        ) {
            let mut buf = sample();
            let head = buf.len();
            buf.extend_from_slice(&tail);
            let at = split.index(buf.len() + 1);
            let whole = parse_request(&buf, LIMIT).unwrap();
            prop_assert!(matches!(whole, Status::Complete(r) if r.len == head));
            let part = parse_request(&buf[..at], LIMIT).unwrap();
            if at < head {
                prop_assert_eq!(part, Status::Partial);
            } else {
                prop_assert_eq!(part, whole);
            }
        }

        /// Arbitrary bytes (with a bias towards HTTP-looking input) never panic,
        /// never report len > buf.len(), and a Complete prefix stays Complete with
        /// the same len when bytes are appended.
        #[test]
        fn arbitrary_bytes_never_panic(
            prefix in prop_oneof![
                Just(Vec::new()),
                Just(b"GET / HTTP/1.1\r\n".to_vec()),
                Just(sample()),
            ],
            noise in proptest::collection::vec(any::<u8>(), 0..256),
            limit in 0usize..600,
            split in any::<proptest::sample::Index>(),
        ) {
            let mut buf = prefix;
            buf.extend_from_slice(&noise);
            let at = split.index(buf.len() + 1);
            let first = parse_request(&buf[..at], limit);
            let full = parse_request(&buf, limit);
            for r in [&first, &full] {
                if let Ok(Status::Complete(req)) = r {
                    prop_assert!(req.len <= buf.len());
                    let _ = req.websocket();
                    let _ = req.query_param("nick");
                    let _ = origin_allowed(req.origin, req.host, &["*".to_string()]);
                }
            }
            if let Ok(Status::Complete(req)) = first {
                prop_assert_eq!(full, Ok(Status::Complete(req)));
            }
            if let Ok(Status::Complete((_, len))) = parse_response(&buf, KEY, limit) {
                prop_assert!(len <= buf.len());
            }
        }
    }
}
