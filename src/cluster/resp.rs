//! RESP2, the Redis serialization protocol: a command encoder and an
//! incremental, bounded reply parser.
//!
//! The parser works on a byte slice holding whatever has arrived so far:
//! [`parse`] returns `Ok(None)` when the slice ends inside a value ("need more
//! bytes" is a normal outcome, not an error), `Ok(Some((value, used)))` for one
//! complete value, and a typed [`RespError`] for input that can never become
//! valid. Every length is checked against [`Limits`] before anything is
//! reserved, and nesting is bounded, so no input can make it allocate without
//! bound, recurse without bound or panic (the `resp` fuzz target checks this).

use std::fmt;

/// Bounds on what the parser accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string payload in bytes.
    pub max_bulk: usize,
    /// Most elements of one array.
    pub max_array: usize,
    /// Deepest array nesting (an array inside an array is depth 2).
    pub max_depth: usize,
    /// Longest simple string, error or integer line in bytes.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 4 * 1024 * 1024,
            max_array: 4096,
            max_depth: 4,
            max_line: 64 * 1024,
        }
    }
}

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK\r\n`
    Simple(Vec<u8>),
    /// `-ERR message\r\n`
    Error(Vec<u8>),
    /// `:42\r\n`
    Integer(i64),
    /// `$3\r\nfoo\r\n`; `None` for the null bulk string `$-1\r\n`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`; `None` for the null array `*-1\r\n`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// The integer of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

/// Input that is not, and can never become, a valid RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    /// The first byte of a value is not one of `+ - : $ *`.
    BadType(u8),
    /// A length or integer line is not a decimal number in range.
    BadNumber,
    /// A bulk string's payload is not followed by CRLF.
    MissingCrlf,
    /// A bulk string longer than [`Limits::max_bulk`].
    BulkTooLong(u64),
    /// An array longer than [`Limits::max_array`].
    ArrayTooLong(u64),
    /// Arrays nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// A simple string, error or number line longer than [`Limits::max_line`].
    LineTooLong,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::BadType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadNumber => f.write_str("bad RESP number"),
            RespError::MissingCrlf => f.write_str("bulk string not terminated by CRLF"),
            RespError::BulkTooLong(n) => write!(f, "bulk string of {n} bytes over the limit"),
            RespError::ArrayTooLong(n) => write!(f, "array of {n} elements over the limit"),
            RespError::TooDeep => f.write_str("arrays nested too deeply"),
            RespError::LineTooLong => f.write_str("RESP line over the limit"),
        }
    }
}

impl std::error::Error for RespError {}

/// Append one command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_len(out, b'*', args.len());
    for a in args {
        push_len(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Append `value` in its wire form (used by tests and the fuzz target's round trip).
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Simple(s) => {
            out.push(b'+');
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        }
        Value::Error(s) => {
            out.push(b'-');
            out.extend_from_slice(s);
            out.extend_from_slice(b"\r\n");
        }
        Value::Integer(n) => {
            out.push(b':');
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        Value::Bulk(Some(b)) => {
            push_len(out, b'$', b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        Value::Array(Some(items)) => {
            push_len(out, b'*', items.len());
            for v in items {
                encode_value(out, v);
            }
        }
    }
}

fn push_len(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Parse one value from the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the value and how many bytes it used.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, RespError> {
    let mut pos = 0;
    match value(buf, &mut pos, limits, 1)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

/// The line starting at `*pos` (without CRLF); advances past the CRLF.
fn line<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
) -> Result<Option<&'a [u8]>, RespError> {
    let start = *pos;
    let rest = &buf[start.min(buf.len())..];
    let window = &rest[..rest.len().min(limits.max_line + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => {
            *pos = start + i + 2;
            Ok(Some(&rest[..i]))
        }
        None if rest.len() > limits.max_line + 1 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn number(s: &[u8]) -> Result<i64, RespError> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadNumber);
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((d - b'0') as i64))
            .ok_or(RespError::BadNumber)?;
    }
    Ok(if neg { -n } else { n })
}

fn value(
    buf: &[u8],
    pos: &mut usize,
    limits: &Limits,
    depth: usize,
) -> Result<Option<Value>, RespError> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
        return Err(RespError::BadType(kind));
    }
    let mut p = *pos + 1;
    let Some(l) = line(buf, &mut p, limits)? else {
        return Ok(None);
    };
    let v = match kind {
        b'+' => Value::Simple(l.to_vec()),
        b'-' => Value::Error(l.to_vec()),
        b':' => Value::Integer(number(l)?),
        b'$' => {
            let n = number(l)?;
            if n == -1 {
                Value::Bulk(None)
            } else if n < 0 {
                return Err(RespError::BadNumber);
            } else if n as u64 > limits.max_bulk as u64 {
                return Err(RespError::BulkTooLong(n as u64));
            } else {
                let n = n as usize;
                if buf.len() < p + n + 2 {
                    return Ok(None);
                }
                if &buf[p + n..p + n + 2] != b"\r\n" {
                    return Err(RespError::MissingCrlf);
                }
                let v = buf[p..p + n].to_vec();
                p += n + 2;
                Value::Bulk(Some(v))
            }
        }
        _ => {
            let n = number(l)?;
            if n == -1 {
                Value::Array(None)
            } else if n < 0 {
                return Err(RespError::BadNumber);
            } else if n as u64 > limits.max_array as u64 {
                return Err(RespError::ArrayTooLong(n as u64));
            } else if n > 0 && depth >= limits.max_depth {
                return Err(RespError::TooDeep);
            } else {
                // Every element takes at least 3 bytes: never reserve more
                // than the input could hold.
                let mut items = Vec::with_capacity((n as usize).min(buf.len() / 3));
                for _ in 0..n {
                    match value(buf, &mut p, limits, depth + 1)? {
                        Some(v) => items.push(v),
                        None => return Ok(None),
                    }
                }
                Value::Array(Some(items))
            }
        }
    };
    *pos = p;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Value {
        let (v, used) = parse(input, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, input.len());
        v
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple(b"OK".to_vec()));
        assert_eq!(one(b"-ERR x\r\n"), Value::Error(b"ERR x".to_vec()));
        assert_eq!(one(b":-42\r\n"), Value::Integer(-42));
        assert_eq!(one(b"$3\r\nfoo\r\n"), Value::Bulk(Some(b"foo".to_vec())));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(Some(Vec::new())));
        assert_eq!(one(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(one(b"*-1\r\n"), Value::Array(None));
        assert_eq!(
            one(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\nl\r\n"),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"message".to_vec())),
                Value::Bulk(Some(b"ch".to_vec())),
                Value::Bulk(Some(b"he\r\nl".to_vec())),
            ]))
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        let full = b"*2\r\n$3\r\nfoo\r\n*1\r\n:7\r\n";
        for i in 0..full.len() {
            assert_eq!(
                parse(&full[..i], &Limits::default()),
                Ok(None),
                "prefix {i}"
            );
        }
        assert!(parse(full, &Limits::default()).unwrap().is_some());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let l = Limits {
            max_bulk: 10,
            max_array: 2,
            max_depth: 2,
            max_line: 8,
        };
        assert_eq!(parse(b"?x\r\n", &l), Err(RespError::BadType(b'?')));
        assert_eq!(parse(b":x\r\n", &l), Err(RespError::BadNumber));
        assert_eq!(parse(b"$-2\r\n", &l), Err(RespError::BadNumber));
        assert_eq!(parse(b"$11\r\n", &l), Err(RespError::BulkTooLong(11)));
        assert_eq!(parse(b"*3\r\n", &l), Err(RespError::ArrayTooLong(3)));
        assert_eq!(parse(b"*1\r\n*1\r\n:1\r\n", &l), Err(RespError::TooDeep));
        assert_eq!(parse(b"$2\r\nabcd", &l), Err(RespError::MissingCrlf));
        assert_eq!(parse(b"+123456789012", &l), Err(RespError::LineTooLong));
        assert_eq!(
            parse(b":99999999999999999999\r\n", &Limits::default()),
            Err(RespError::BadNumber)
        );
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let v = one(&out);
        let mut again = Vec::new();
        encode_value(&mut again, &v);
        assert_eq!(again, out);
    }
}

/// Cross-checks against the `redis-protocol` crate (a dev-dependency).
#[cfg(test)]
mod crosscheck {
    use super::*;
    use proptest::prelude::*;
    use redis_protocol::resp2::decode::decode;
    use redis_protocol::resp2::types::OwnedFrame;

    /// Ours, in the other crate's shape (it has one `Null` for both nulls).
    fn shape(v: &Value) -> OwnedFrame {
        match v {
            Value::Simple(s) => OwnedFrame::SimpleString(s.clone()),
            Value::Error(s) => OwnedFrame::Error(String::from_utf8_lossy(s).into_owned()),
            Value::Integer(n) => OwnedFrame::Integer(*n),
            Value::Bulk(Some(b)) => OwnedFrame::BulkString(b.clone()),
            Value::Array(Some(items)) => OwnedFrame::Array(items.iter().map(shape).collect()),
            Value::Bulk(None) | Value::Array(None) => OwnedFrame::Null,
        }
    }

    fn text() -> impl Strategy<Value = Vec<u8>> {
        // Simple strings and errors cannot hold CR or LF.
        proptest::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..12,
        )
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            text().prop_map(Value::Simple),
            "[a-zA-Z ]{0,12}".prop_map(|s| Value::Error(s.into_bytes())),
            any::<i64>().prop_map(Value::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Bulk(Some(b))),
            Just(Value::Bulk(None)),
            Just(Value::Array(None)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(|v| Value::Array(Some(v)))
        })
    }

    proptest! {
        /// Valid encodings: both parsers agree on the value and its length,
        /// and every split point is "need more bytes" for both.
        #[test]
        fn agrees_on_valid_input(v in value(), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_value(&mut bytes, &v);
            let theirs = decode(&bytes).expect("redis-protocol parses it").expect("complete");
            let ours = parse(&bytes, &Limits::default()).expect("we parse it").expect("complete");
            prop_assert_eq!(&ours.0, &v);
            prop_assert_eq!(ours.1, theirs.1);
            prop_assert_eq!(shape(&ours.0), theirs.0);
            let cut = cut.index(bytes.len());
            prop_assert_eq!(parse(&bytes[..cut], &Limits::default()), Ok(None));
            prop_assert!(matches!(decode(&bytes[..cut]), Ok(None)));
        }

        /// Arbitrary bytes: whenever both accept a complete value, they agree.
        #[test]
        fn agrees_on_arbitrary_input(bytes in proptest::collection::vec(
            prop_oneof![Just(b'*'), Just(b'$'), Just(b':'), Just(b'+'), Just(b'-'),
                        Just(b'\r'), Just(b'\n'), Just(b'1'), Just(b'2'), any::<u8>()], 0..40)) {
            let ours = parse(&bytes, &Limits::default());
            if let (Ok(Some((v, used))), Ok(Some((f, n)))) = (&ours, decode(&bytes)) {
                prop_assert_eq!(*used, n);
                prop_assert_eq!(shape(v), f);
            }
        }
    }
}
