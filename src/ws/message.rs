//! Messages: frame decoding, fragment reassembly, incremental UTF-8 checks
//! and close payload validation, behind one `feed` call.
//!
//! A whole unfragmented frame inside the caller's input is returned borrowing
//! that input (unmasked in place): no copy. Only a message spanning reads or
//! fragments is copied into the receiver's buffer, which exists only while
//! such a message is in flight, so an idle connection holds no heap memory.

use std::cell::Cell;

use super::close::parse_close_payload;
use super::deflate::Inflater;
pub use super::error::ProtocolError;
use super::frame::{Chunk, FrameDecoder, OpCode, Role, MAX_CONTROL_PAYLOAD};
use super::utf8::Utf8Validator;

/// Size limits, passed by reference so each connection does not store its own copy.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest frame payload accepted; a larger announced length is
    /// [`ProtocolError::FrameTooLarge`] before any byte of it is buffered.
    pub max_frame: u64,
    /// Largest message (sum of its fragments); beyond it
    /// [`ProtocolError::MessageTooLarge`].
    pub max_message: usize,
}

impl Default for Limits {
    /// 16 MiB frames and messages.
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_message: 16 << 20,
        }
    }
}

/// A complete message or control frame, borrowing from the caller's input (zero-copy when a whole unfragmented
/// frame is in the input) or from the Receiver's reassembly buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message, valid UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame with a validated code and reason; after it `feed` ignores input.
    Close {
        /// The status code, `None` for an empty close payload.
        code: Option<u16>,
        /// The reason, possibly empty.
        reason: &'a str,
    },
}

/// An owned copy of a [`Message`], for callers that keep messages past the
/// next `feed` (tests, fuzz targets, clients that queue what they read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping and its payload.
    Ping(Vec<u8>),
    /// A pong and its payload.
    Pong(Vec<u8>),
    /// A close frame: code and reason.
    Close(Option<u16>, String),
}

impl Message<'_> {
    /// Copy the message out of the buffer it borrows from.
    pub fn to_owned_message(&self) -> OwnedMessage {
        match *self {
            Message::Text(s) => OwnedMessage::Text(s.to_owned()),
            Message::Binary(b) => OwnedMessage::Binary(b.to_vec()),
            Message::Ping(b) => OwnedMessage::Ping(b.to_vec()),
            Message::Pong(b) => OwnedMessage::Pong(b.to_vec()),
            Message::Close { code, reason } => OwnedMessage::Close(code, reason.to_owned()),
        }
    }
}

/// The data message being received across frames or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partial {
    /// At a message boundary.
    None,
    /// A text message is being collected in `buf`.
    Text,
    /// A binary message is being collected in `buf`.
    Binary,
    /// A data message is being consumed and dropped (closing).
    Drop,
}

/// Which message a completed step yields.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

/// Where the payload of a completed message is, without holding a borrow.
enum Done {
    /// `input[start..end]`; compressed when the flag is set.
    Input(Kind, usize, usize, bool),
    /// `buf[start..]`; compressed when the flag is set.
    Buffer(Kind, usize, bool),
}

const CLOSING: u8 = 1;
const CLOSED: u8 = 2;
/// A buffered data message was delivered: empty `buf` on the next call.
const RELEASE: u8 = 4;
/// A buffered control frame was delivered: drop its `ctrl_len` bytes from the end of `buf`.
const CTRL_DONE: u8 = 8;
/// The data message in progress is compressed (RSV1 on its first frame).
const COMPRESSED: u8 = 16;
/// permessage-deflate was negotiated with a narrowed server window: compress
/// towards this peer only messages of at most `deflate::NARROW_MAX` bytes.
const NARROW: u8 = 32;
/// This end sent a Close but still wants the data the peer sent before
/// answering it (a client that sent its last lines and waits for the replies).
const SENT_CLOSE: u8 = 64;

/// Largest compressed size accepted for a message of at most `max_message`
/// inflated bytes: incompressible data grows a little when deflated (stored
/// blocks cost 5 bytes per 64 KiB; a poor encoder's fixed Huffman codes up to
/// 1/8), so the wire bound is the limit plus an eighth.
pub fn wire_limit(max_message: usize) -> usize {
    max_message
        .saturating_add(max_message / 8)
        .saturating_add(64)
}

/// Decoder + fragment assembler + incremental (fail-fast) UTF-8 validation + close-code validation.
/// Small: keep size_of::<Receiver>() <= 64 bytes if at all possible (it lives in every connection entry);
/// it holds heap memory only while a message is partially received.
///
/// `buf` holds the data message in progress, followed by the payload of a
/// control frame that spans reads (its last `ctrl_len` bytes): a control frame
/// may arrive between two fragments of a message.
#[derive(Debug)]
pub struct Receiver {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    utf8: Utf8Validator,
    partial: Partial,
    ctrl_len: u8,
    flags: u8,
    /// An error was returned: the stream is unusable. A `Cell` so that the
    /// last step of `feed`, which already lends out the message, can set it.
    failed: Cell<bool>,
}

impl Receiver {
    /// A receiver enforcing the masking rule of `role`.
    pub fn new(role: Role) -> Self {
        Receiver {
            decoder: FrameDecoder::new(role),
            buf: Vec::new(),
            utf8: Utf8Validator::new(),
            partial: Partial::None,
            ctrl_len: 0,
            flags: 0,
            failed: Cell::new(false),
        }
    }

    /// A receiver for a connection that negotiated permessage-deflate: RSV1
    /// may start a data message, which [`Receiver::feed_with`] inflates.
    /// `narrow`: the peer limited the server's window (see
    /// [`crate::ws::deflate::Agreement::narrow`]); only recorded here.
    pub fn with_deflate(role: Role, narrow: bool) -> Self {
        let mut rx = Receiver::new(role);
        rx.decoder.set_deflate(true);
        if narrow {
            rx.flags |= NARROW;
        }
        rx
    }

    /// permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.decoder.deflate()
    }

    /// permessage-deflate was negotiated with a window below 32 KiB.
    pub fn narrow(&self) -> bool {
        self.flags & NARROW != 0
    }

    /// The role whose input rules this receiver enforces.
    pub fn role(&self) -> Role {
        self.decoder.role()
    }

    /// True once `feed` returned an error.
    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// True after [`Receiver::set_closing`] or [`Receiver::set_close_sent`].
    pub fn is_closing(&self) -> bool {
        self.flags & (CLOSING | SENT_CLOSE) != 0
    }

    /// Record that this end sent a Close, but keep returning data messages
    /// until the peer's Close (unlike [`Receiver::set_closing`]).
    pub fn set_close_sent(&mut self) {
        self.flags |= SENT_CLOSE;
    }

    /// Consume bytes from `input` (payload is unmasked in place) until one message completes or input ends.
    /// Returns (bytes consumed, Some(message)) or (input.len(), None) when all bytes were absorbed into the state
    /// (partial header, partial payload): the caller never keeps an unparsed tail. Call again with the rest.
    ///
    /// Calling it with an empty `input` releases the buffer of a message
    /// delivered by the previous call. After an error the stream is unusable:
    /// close the connection with [`ProtocolError::close_code`].
    pub fn feed<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Message<'a>>), ProtocolError> {
        self.feed_with(input, limits, None)
    }

    /// [`Receiver::feed`] for a connection that may receive compressed
    /// messages: they are inflated by the loop's shared `inflater` (reset per
    /// message), and the message then borrows its output buffer. The inflated
    /// size counts against `limits.max_message` while inflating (1009 beyond
    /// it); a compressed message without an inflater is
    /// [`ProtocolError::UnexpectedCompression`].
    ///
    /// Compressed bytes spanning frames or reads are kept in the receiver's
    /// buffer (at most [`wire_limit`] bytes) and inflated when the message is
    /// complete, which is what lets one inflater serve every connection.
    /// UTF-8 of a compressed text message is checked once it is inflated.
    pub fn feed_with<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: &Limits,
        inflater: Option<&'a mut Inflater>,
    ) -> Result<(usize, Option<Message<'a>>), ProtocolError> {
        self.release_delivered();
        if self.flags & CLOSED != 0 || self.failed.get() {
            return Ok((input.len(), None));
        }
        let (pos, done) = match self.step(input, limits) {
            Ok((pos, Some(done))) => (pos, done),
            Ok((pos, None)) => return Ok((pos, None)),
            Err(e) => {
                self.failed.set(true);
                return Err(e);
            }
        };
        let input: &'a [u8] = input;
        let this: &'a Self = self;
        let (kind, payload, compressed) = match done {
            Done::Input(kind, start, end, z) => {
                (kind, input.get(start..end).unwrap_or_default(), z)
            }
            Done::Buffer(kind, start, z) => (kind, this.buf.get(start..).unwrap_or_default(), z),
        };
        let payload = if compressed {
            let Some(inflater) = inflater else {
                return this.fail(ProtocolError::UnexpectedCompression);
            };
            match inflater.inflate(&[payload], limits.max_message) {
                Ok(p) => p,
                Err(e) => return this.fail(e),
            }
        } else {
            payload
        };
        let message = match kind {
            Kind::Text => match std::str::from_utf8(payload) {
                Ok(t) => Message::Text(t),
                Err(_) => return this.fail(ProtocolError::InvalidUtf8),
            },
            Kind::Binary => Message::Binary(payload),
            Kind::Ping => Message::Ping(payload),
            Kind::Pong => Message::Pong(payload),
            Kind::Close => match parse_close_payload(payload) {
                Ok((code, reason)) => Message::Close { code, reason },
                Err(e) => return this.fail(e),
            },
        };
        Ok((pos, Some(message)))
    }

    fn fail<T>(&self, e: ProtocolError) -> Result<T, ProtocolError> {
        self.failed.set(true);
        Err(e)
    }

    /// Decode until a message is complete (`Some`) or the input is used up.
    fn step(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Done>), ProtocolError> {
        let mut pos = 0;
        // A compressed frame may be a little longer than what it inflates to:
        // with deflate negotiated, frames get the wire bound; messages are
        // still held to theirs below.
        let max_frame = if self.decoder.deflate() {
            wire_limit(usize::try_from(limits.max_frame).unwrap_or(usize::MAX)) as u64
        } else {
            limits.max_frame
        };
        loop {
            let (n, chunk) = self
                .decoder
                .decode(input.get_mut(pos..).unwrap_or_default(), max_frame)?;
            pos += n;
            let Some(chunk) = chunk else {
                return Ok((input.len(), None));
            };
            let start = pos - chunk.payload.len();
            if let Some(done) = self.on_chunk(chunk, start, pos, limits)? {
                if matches!(done, Done::Input(_, _, _, true) | Done::Buffer(_, _, true)) {
                    self.flags &= !COMPRESSED;
                }
                return Ok((pos, Some(done)));
            }
        }
    }

    /// After this endpoint sent a Close: data messages are consumed and dropped; control frames still returned.
    pub fn set_closing(&mut self) {
        self.flags |= CLOSING;
    }

    /// True once a Close frame was returned; later input is ignored.
    pub fn is_closed(&self) -> bool {
        self.flags & CLOSED != 0
    }

    /// Heap bytes held (partial message capacity), for tests and metrics.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Forget what the previous call returned from `buf`.
    fn release_delivered(&mut self) {
        if self.flags & CTRL_DONE != 0 {
            let keep = self.buf.len().saturating_sub(usize::from(self.ctrl_len));
            self.buf.truncate(keep);
            self.ctrl_len = 0;
        }
        if self.flags & RELEASE != 0 {
            self.buf.clear();
        }
        self.flags &= !(CTRL_DONE | RELEASE);
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }

    /// Append to `buf`, growing it geometrically but never past what the
    /// limits allow, so the capacity stays bounded by the message limit.
    fn append(&mut self, bytes: &[u8], limits: &Limits) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let cap = limits.max_message.saturating_add(MAX_CONTROL_PAYLOAD);
            let target = self
                .buf
                .capacity()
                .saturating_mul(2)
                .max(256)
                .min(cap)
                .max(need);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    fn on_chunk(
        &mut self,
        chunk: Chunk<'_>,
        start: usize,
        end: usize,
        limits: &Limits,
    ) -> Result<Option<Done>, ProtocolError> {
        let last = chunk.is_last();
        let kind = match chunk.opcode {
            OpCode::Close => Some(Kind::Close),
            OpCode::Ping => Some(Kind::Ping),
            OpCode::Pong => Some(Kind::Pong),
            _ => None,
        };
        if let Some(kind) = kind {
            if chunk.first && last {
                if matches!(kind, Kind::Close) {
                    self.flags |= CLOSED;
                }
                return Ok(Some(Done::Input(kind, start, end, false)));
            }
            // The decoder bounds control payloads to 125 bytes.
            self.append(chunk.payload, limits);
            self.ctrl_len = self.ctrl_len.saturating_add(chunk.payload.len() as u8);
            if !last {
                return Ok(None);
            }
            self.flags |= CTRL_DONE;
            if matches!(kind, Kind::Close) {
                self.flags |= CLOSED;
            }
            let at = self.buf.len().saturating_sub(usize::from(self.ctrl_len));
            return Ok(Some(Done::Buffer(kind, at, false)));
        }

        let message_end = chunk.fin && last;
        if chunk.first {
            match (chunk.opcode, self.partial) {
                (OpCode::Continuation, Partial::None) => {
                    return Err(ProtocolError::UnexpectedContinuation)
                }
                (OpCode::Continuation, _) | (_, Partial::None) => {}
                _ => return Err(ProtocolError::ExpectedContinuation),
            }
        }
        if self.flags & CLOSING != 0 {
            self.flags &= !COMPRESSED;
            if self.partial != Partial::Drop {
                self.buf = Vec::new();
                self.utf8.reset();
            }
            self.partial = if message_end {
                Partial::None
            } else {
                Partial::Drop
            };
            return Ok(None);
        }
        if chunk.first {
            if chunk.compressed {
                // The decoder allows RSV1 only on Text/Binary, so this starts a message.
                self.flags |= COMPRESSED;
            }
            let z = self.flags & COMPRESSED != 0;
            let frame_len = chunk.payload.len() as u64 + chunk.remaining;
            let max = if z {
                wire_limit(limits.max_message)
            } else {
                limits.max_message
            };
            // Only data bytes are in `buf` here: control frames never overlap a data frame.
            if self.buf.len() as u64 + frame_len > max as u64 {
                return Err(ProtocolError::MessageTooLarge);
            }
            match chunk.opcode {
                OpCode::Text if message_end => {
                    return Ok(Some(Done::Input(Kind::Text, start, end, z)))
                }
                OpCode::Binary if message_end => {
                    return Ok(Some(Done::Input(Kind::Binary, start, end, z)))
                }
                OpCode::Text => {
                    self.partial = Partial::Text;
                    self.utf8.reset();
                }
                OpCode::Binary => self.partial = Partial::Binary,
                _ => {}
            }
        }
        let z = self.flags & COMPRESSED != 0;
        let kind = match self.partial {
            // Compressed text is checked once inflated.
            Partial::Text if z => Kind::Text,
            Partial::Text => {
                self.utf8
                    .feed(chunk.payload)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
                Kind::Text
            }
            Partial::Binary => Kind::Binary,
            // Unreachable by the checks above; consuming is the safe answer.
            Partial::None | Partial::Drop => return Ok(None),
        };
        self.append(chunk.payload, limits);
        if !message_end {
            return Ok(None);
        }
        if matches!(kind, Kind::Text) && !z {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.partial = Partial::None;
        self.flags |= RELEASE;
        Ok(Some(Done::Buffer(kind, 0, z)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{encode_close, encode_frame};
    use proptest::prelude::*;

    use super::OwnedMessage as Owned;

    fn own(m: Message<'_>) -> Owned {
        m.to_owned_message()
    }

    /// Feed `bytes` in pieces of `step` bytes; the messages until the first error.
    fn run(
        rx: &mut Receiver,
        bytes: &[u8],
        step: usize,
        limits: &Limits,
    ) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut data = bytes.to_vec();
        let mut out = Vec::new();
        for piece in data.chunks_mut(step.max(1)) {
            let len = piece.len();
            let mut pos = 0;
            loop {
                match rx.feed(&mut piece[pos..], limits) {
                    Err(e) => return (out, Some(e)),
                    Ok((n, msg)) => {
                        pos += n;
                        match msg {
                            Some(m) => out.push(own(m)),
                            None => break,
                        }
                    }
                }
            }
            assert_eq!(pos, len);
        }
        (out, None)
    }

    fn run_all(role: Role, bytes: &[u8], limits: &Limits) -> (Vec<Owned>, Option<ProtocolError>) {
        let whole = run(&mut Receiver::new(role), bytes, usize::MAX, limits);
        for step in [1, 2, 3, 7, 64, 1000] {
            let split = run(&mut Receiver::new(role), bytes, step, limits);
            assert_eq!(split, whole, "step {step}");
        }
        whole
    }

    const M: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    /// Client-to-server frames (masked).
    fn frames(list: &[(OpCode, bool, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (op, fin, p) in list {
            encode_frame(&mut out, *op, *fin, p, M);
        }
        out
    }

    fn server(list: &[(OpCode, bool, &[u8])]) -> (Vec<Owned>, Option<ProtocolError>) {
        run_all(Role::Server, &frames(list), &Limits::default())
    }

    fn text(s: &str) -> Owned {
        Owned::Text(s.to_owned())
    }

    use OpCode::{Binary as B, Close as C, Continuation as K, Ping as P, Pong as O, Text as T};

    #[test]
    fn receiver_is_small() {
        assert!(
            std::mem::size_of::<Receiver>() <= 64,
            "{}",
            std::mem::size_of::<Receiver>()
        );
        assert!(std::mem::size_of::<FrameDecoder>() <= 32);
    }

    #[test]
    fn rfc_5_7_messages() {
        let mut masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            run_all(Role::Server, &masked, &Limits::default()),
            (vec![text("Hello")], None)
        );
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            run_all(Role::Client, &unmasked, &Limits::default()),
            (vec![text("Hello")], None)
        );
        let frag = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(
            run_all(Role::Client, &frag, &Limits::default()),
            (vec![text("Hello")], None)
        );
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            run_all(Role::Client, &ping, &Limits::default()),
            (vec![Owned::Ping(b"Hello".to_vec())], None)
        );
        // Zero-copy: the text borrows the input, unmasked in place.
        let mut rx = Receiver::new(Role::Server);
        let range = masked.as_ptr_range();
        let (n, msg) = rx.feed(&mut masked, &Limits::default()).unwrap();
        assert_eq!(n, 11);
        let Some(Message::Text(s)) = msg else {
            panic!("{msg:?}")
        };
        assert!(range.contains(&s.as_ptr()));
        assert_eq!(rx.heap_bytes(), 0);
    }

    #[test]
    fn framing_lengths_autobahn_1() {
        for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
            let t = "*".repeat(len);
            let b = vec![0xFEu8; len];
            let (msgs, err) = server(&[(T, true, t.as_bytes()), (B, true, &b)]);
            assert_eq!(err, None);
            assert_eq!(msgs, vec![text(&t), Owned::Binary(b)]);
        }
    }

    #[test]
    fn pings_and_pongs_autobahn_2() {
        let p125 = [0xFE; 125];
        let (msgs, err) = server(&[
            (P, true, b""),
            (P, true, b"Hello"),
            (P, true, &p125),
            (O, true, b"x"),
        ]);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            vec![
                Owned::Ping(vec![]),
                Owned::Ping(b"Hello".to_vec()),
                Owned::Ping(p125.to_vec()),
                Owned::Pong(b"x".to_vec())
            ]
        );
        // 126-byte ping: 1002 (2.5).
        let (_, err) = server(&[(P, true, &[0; 126])]);
        assert_eq!(err.map(|e| e.close_code()), Some(1002));
        // Ten pings in one read (2.10/2.11).
        let many: Vec<_> = (0..10).map(|_| (P, true, &b"ping"[..])).collect();
        assert_eq!(server(&many).0.len(), 10);
    }

    #[test]
    fn reserved_bits_and_opcodes_autobahn_3_4() {
        for rsv in 1u8..8 {
            for op in [1u8, 2, 8, 9, 10] {
                let mut bytes = frames(&[(T, true, b"ok")]);
                bytes.extend_from_slice(&[0x80 | (rsv << 4) | op, 0x80, 0, 0, 0, 0]);
                let (msgs, err) = run_all(Role::Server, &bytes, &Limits::default());
                assert_eq!(msgs, vec![text("ok")]);
                assert_eq!(err, Some(ProtocolError::ReservedBits));
                assert_eq!(err.unwrap().close_code(), 1002);
            }
        }
        for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            let mut bytes = frames(&[(T, true, b"ok")]);
            bytes.extend_from_slice(&[0x80 | op, 0x80, 0, 0, 0, 0]);
            let (msgs, err) = run_all(Role::Server, &bytes, &Limits::default());
            assert_eq!(msgs, vec![text("ok")]);
            assert_eq!(err, Some(ProtocolError::ReservedOpcode(op)));
            assert_eq!(err.unwrap().close_code(), 1002);
        }
    }

    #[test]
    fn fragmentation_autobahn_5() {
        // 5.1/5.2: fragmented control frames.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0x09, 0x80, 0, 0, 0, 0]);
        let (_, err) = run_all(Role::Server, &bytes, &Limits::default());
        assert_eq!(err, Some(ProtocolError::FragmentedControl));
        // 5.3-5.8: fragments with pings/pongs between them, delivered at once.
        let (msgs, err) = server(&[
            (T, false, b"frag"),
            (P, true, b"p1"),
            (K, false, b"men"),
            (O, true, b"u"),
            (K, true, b"ts"),
        ]);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            vec![
                Owned::Ping(b"p1".to_vec()),
                Owned::Pong(b"u".to_vec()),
                text("fragments")
            ]
        );
        // 5.9-5.14: continuation without a start.
        let (msgs, err) = server(&[(K, true, b"x"), (T, true, b"y")]);
        assert_eq!(
            (msgs, err),
            (vec![], Some(ProtocolError::UnexpectedContinuation))
        );
        let (_, err) = server(&[(K, false, b"x")]);
        assert_eq!(err, Some(ProtocolError::UnexpectedContinuation));
        // A finished message does not accept a continuation (5.15/5.16).
        let (msgs, err) = server(&[(T, false, b"a"), (K, true, b"b"), (K, true, b"c")]);
        assert_eq!(msgs, vec![text("ab")]);
        assert_eq!(err.map(|e| e.close_code()), Some(1002));
        // 5.18: a new data frame inside a fragmented message.
        let (msgs, err) = server(&[(T, false, b"a"), (T, true, b"b")]);
        assert_eq!(
            (msgs, err),
            (vec![], Some(ProtocolError::ExpectedContinuation))
        );
        let (_, err) = server(&[(B, false, b"a"), (P, true, b""), (B, true, b"b")]);
        assert_eq!(err, Some(ProtocolError::ExpectedContinuation));
        // 5.19/5.20: many fragments with pings, all in one read.
        let (msgs, err) = server(&[
            (T, false, b"f1"),
            (K, false, b"f2"),
            (P, true, b"1"),
            (K, false, b"f3"),
            (K, false, b"f4"),
            (P, true, b"2"),
            (K, true, b"f5"),
        ]);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            vec![
                Owned::Ping(b"1".to_vec()),
                Owned::Ping(b"2".to_vec()),
                text("f1f2f3f4f5")
            ]
        );
        // Empty fragments (5.x, 6.1.2/6.1.3).
        let (msgs, _) = server(&[(T, false, b""), (K, false, b""), (K, true, b"")]);
        assert_eq!(msgs, vec![text("")]);
    }

    #[test]
    fn utf8_autobahn_6() {
        let s = "κόσμε Hello-µ@ßöäüàá-UTF-8!! \u{10FFFF}";
        // Any fragmentation of valid text: bytewise fragments.
        let b = s.as_bytes();
        let mut list: Vec<(OpCode, bool, &[u8])> = Vec::new();
        for (i, byte) in b.chunks(1).enumerate() {
            let op = if i == 0 { T } else { K };
            list.push((op, i + 1 == b.len(), byte));
        }
        assert_eq!(server(&list), (vec![text(s)], None));
        // Invalid sequences (6.3-6.22): 1007 whole or fragmented.
        let bad: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf8\x88\x80\x80\x80",
            b"\xc0\xaf",
            b"\xed\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\x80",
            b"\xef\xbf",
        ];
        for bytes in bad {
            let (_, err) = server(&[(T, true, bytes)]);
            assert_eq!(err, Some(ProtocolError::InvalidUtf8), "{bytes:x?}");
            let (_, err) = server(&[(T, false, bytes), (K, true, b"")]);
            assert_eq!(err.map(|e| e.close_code()), Some(1007));
        }
        // Fail fast (6.4.x): the error comes before the message (or frame) ends.
        let mut rx = Receiver::new(Role::Server);
        let mut first = frames(&[(
            T,
            false,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90",
        )]);
        assert_eq!(
            rx.feed(&mut first, &Limits::default()).err(),
            Some(ProtocolError::InvalidUtf8)
        );
        // ... also inside one frame whose payload has not fully arrived.
        let mut rx = Receiver::new(Role::Server);
        let mut bytes = frames(&[(T, true, b"ok\xed\xa0\x80 and much more text after it")]);
        bytes.truncate(6 + 4);
        assert_eq!(
            rx.feed(&mut bytes, &Limits::default()).err(),
            Some(ProtocolError::InvalidUtf8)
        );
        // Binary is not checked.
        assert_eq!(
            server(&[(B, true, b"\xff")]).0,
            vec![Owned::Binary(vec![0xff])]
        );
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    #[test]
    fn close_autobahn_7() {
        let (msgs, err) = server(&[(C, true, b"")]);
        assert_eq!((msgs, err), (vec![Owned::Close(None, String::new())], None));
        let (_, err) = server(&[(C, true, b"\x03")]);
        assert_eq!(err.clone().map(|e| e.close_code()), Some(1002));
        assert_eq!(err, Some(ProtocolError::BadClosePayload));
        let (msgs, _) = server(&[(C, true, &close_payload(1000, b"Hello"))]);
        assert_eq!(msgs, vec![Owned::Close(Some(1000), "Hello".into())]);
        let (_, err) = server(&[(C, true, &close_payload(1000, b"\xce\xba\xed\xa0\x80"))]);
        assert_eq!(err.map(|e| e.close_code()), Some(1007));
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let (_, err) = server(&[(C, true, &close_payload(code, b""))]);
            assert_eq!(err, Some(ProtocolError::InvalidCloseCode(code)));
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let (msgs, err) = server(&[(C, true, &close_payload(code, b""))]);
            assert_eq!(
                (msgs, err),
                (vec![Owned::Close(Some(code), String::new())], None)
            );
        }
        // 7.1.x: nothing after a close is processed, not even garbage.
        let mut bytes = frames(&[(T, true, b"a"), (C, true, b""), (T, true, b"b")]);
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(
            run_all(Role::Server, &bytes, &Limits::default()),
            (vec![text("a"), Owned::Close(None, String::new())], None)
        );
        // Max-size reason (123 bytes) split across reads.
        let reason = "r".repeat(123);
        let mut bytes = Vec::new();
        encode_close(&mut bytes, Some(1000), &reason, M);
        assert_eq!(
            run_all(Role::Server, &bytes, &Limits::default()),
            (vec![Owned::Close(Some(1000), reason)], None)
        );
    }

    #[test]
    fn big_messages_autobahn_9() {
        // 16 MiB in one frame, text and binary, at the default limits (9.1.6, 9.2.6).
        let big = vec![b'*'; 16 << 20];
        let bytes = frames(&[(T, true, &big)]);
        let limits = Limits::default();
        for step in [usize::MAX, 65536] {
            let mut rx = Receiver::new(Role::Server);
            let (msgs, err) = run(&mut rx, &bytes, step, &limits);
            assert_eq!(err, None);
            assert!(matches!(&msgs[..], [Owned::Text(t)] if t.len() == 16 << 20));
            assert!(rx.heap_bytes() <= limits.max_message + MAX_CONTROL_PAYLOAD);
        }
        // 4 MiB in 64-byte fragments (9.4.1/9.6.1 style).
        let data = vec![0x5Au8; 4 << 20];
        let mut bytes = Vec::with_capacity(data.len() * 2);
        let n = data.len() / 64;
        for (i, c) in data.chunks(64).enumerate() {
            let op = if i == 0 { B } else { K };
            encode_frame(&mut bytes, op, i + 1 == n, c, M);
        }
        let mut rx = Receiver::new(Role::Server);
        let (msgs, err) = run(&mut rx, &bytes, 65536, &limits);
        assert_eq!((msgs.len(), err), (1, None));
        assert_eq!(msgs[0], Owned::Binary(data));
        // Released once the caller feeds again.
        rx.feed(&mut [], &limits).unwrap();
        assert_eq!(rx.heap_bytes(), 0);
    }

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_frame: 100,
            max_message: 150,
        };
        // Frame over the limit: refused from its header, nothing buffered.
        let mut rx = Receiver::new(Role::Server);
        let mut bytes = frames(&[(B, true, &[0; 101])]);
        assert_eq!(
            rx.feed(&mut bytes[..8], &limits).err(),
            Some(ProtocolError::FrameTooLarge)
        );
        assert_eq!(rx.heap_bytes(), 0);
        let (_, err) = run_all(Role::Server, &frames(&[(B, true, &[0; 101])]), &limits);
        assert_eq!(err.map(|e| e.close_code()), Some(1009));
        // Message over the limit across fragments: refused at the frame that would pass it.
        let bytes = frames(&[
            (T, false, &[b'a'; 100]),
            (K, false, &[b'b'; 50]),
            (K, true, b"c"),
        ]);
        let (msgs, err) = run_all(Role::Server, &bytes, &limits);
        assert_eq!(
            (msgs, err.clone()),
            (vec![], Some(ProtocolError::MessageTooLarge))
        );
        assert_eq!(err.unwrap().close_code(), 1009);
        let mut rx = Receiver::new(Role::Server);
        let _ = run(&mut rx, &bytes, 1, &limits);
        assert!(rx.heap_bytes() <= limits.max_message + MAX_CONTROL_PAYLOAD);
        // Exactly at the limit is fine.
        let bytes = frames(&[(T, false, &[b'a'; 100]), (K, true, &[b'b'; 50])]);
        assert_eq!(run_all(Role::Server, &bytes, &limits).1, None);
        // A single-frame message larger than max_message but within max_frame.
        let limits = Limits {
            max_frame: 1000,
            max_message: 10,
        };
        let (_, err) = run_all(Role::Server, &frames(&[(B, true, &[0; 11])]), &limits);
        assert_eq!(err, Some(ProtocolError::MessageTooLarge));
    }

    #[test]
    fn heap_only_while_partial() {
        let limits = Limits::default();
        let mut rx = Receiver::new(Role::Server);
        let mut bytes = frames(&[(T, true, b"hello there"), (B, true, &[1; 3000])]);
        let (n, msg) = rx.feed(&mut bytes, &limits).unwrap();
        assert_eq!(msg, Some(Message::Text("hello there")));
        assert_eq!(rx.heap_bytes(), 0);
        let rest = &mut bytes[n..];
        let (a, b) = rest.split_at_mut(1000);
        assert_eq!(rx.feed(a, &limits).unwrap(), (1000, None));
        assert!(rx.heap_bytes() > 0);
        let b_len = b.len();
        let (m, msg) = rx.feed(b, &limits).unwrap();
        assert_eq!(m, b_len);
        assert_eq!(msg, Some(Message::Binary(&[1; 3000])));
        assert_eq!(rx.feed(&mut [], &limits).unwrap(), (0, None));
        assert_eq!(rx.heap_bytes(), 0);
    }

    #[test]
    fn closing_drops_data_keeps_control() {
        let limits = Limits::default();
        let mut rx = Receiver::new(Role::Server);
        // A fragmented message in progress when this side sends its close.
        let mut first = frames(&[(T, false, b"abc")]);
        assert_eq!(rx.feed(&mut first, &limits).unwrap().1, None);
        rx.set_closing();
        let bytes = frames(&[
            (K, true, b"def"),
            (B, true, b"dropped"),
            (P, true, b"p"),
            (T, false, b"x"),
            (K, true, b"y"),
            (C, true, &close_payload(1000, b"")),
        ]);
        let (msgs, err) = run(&mut rx, &bytes, 5, &limits);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            vec![
                Owned::Ping(b"p".to_vec()),
                Owned::Close(Some(1000), String::new())
            ]
        );
        assert!(rx.is_closed());
        assert_eq!(rx.heap_bytes(), 0);
    }

    #[test]
    fn client_role_rejects_masked_and_server_unmasked() {
        let masked = frames(&[(T, true, b"x")]);
        let (_, err) = run_all(Role::Client, &masked, &Limits::default());
        assert_eq!(err, Some(ProtocolError::MaskedFrame));
        let mut plain = Vec::new();
        encode_frame(&mut plain, T, true, b"x", None);
        let (_, err) = run_all(Role::Server, &plain, &Limits::default());
        assert_eq!(err, Some(ProtocolError::UnmaskedFrame));
    }

    #[test]
    fn errors_display_and_codes() {
        let all = [
            ProtocolError::UnmaskedFrame,
            ProtocolError::MaskedFrame,
            ProtocolError::ReservedBits,
            ProtocolError::ReservedOpcode(3),
            ProtocolError::FragmentedControl,
            ProtocolError::ControlTooLong,
            ProtocolError::BadLength,
            ProtocolError::FrameTooLarge,
            ProtocolError::MessageTooLarge,
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::InvalidUtf8,
            ProtocolError::BadClosePayload,
            ProtocolError::InvalidCloseCode(5000),
            ProtocolError::InvalidCloseReason,
            ProtocolError::UnexpectedCompression,
            ProtocolError::BadCompressedData,
        ];
        let codes: Vec<u16> = all.iter().map(|e| e.close_code()).collect();
        assert_eq!(
            codes,
            [
                1002, 1002, 1002, 1002, 1002, 1002, 1002, 1009, 1009, 1002, 1002, 1007, 1002, 1002,
                1007, 1002, 1007
            ]
        );
        for e in &all {
            assert!(!e.to_string().is_empty());
        }
    }

    /// Feed `bytes` `step` at a time to a deflate receiver with a shared inflater.
    fn run_z(
        rx: &mut Receiver,
        inf: &mut Inflater,
        bytes: &[u8],
        step: usize,
        limits: &Limits,
    ) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut data = bytes.to_vec();
        let mut out = Vec::new();
        for piece in data.chunks_mut(step.max(1)) {
            let mut pos = 0;
            loop {
                match rx.feed_with(&mut piece[pos..], limits, Some(&mut *inf)) {
                    Err(e) => return (out, Some(e)),
                    Ok((n, Some(m))) => {
                        pos += n;
                        out.push(own(m));
                    }
                    Ok((_, None)) => break,
                }
            }
        }
        (out, None)
    }

    /// Compressed, masked frames for `payload` cut at `cuts` (RSV1 on the first).
    fn z_frames(op: OpCode, payload: &[u8], cuts: &[usize], ping_between: bool) -> Vec<u8> {
        let mut c = crate::ws::deflate::Deflater::new();
        let z = c.compress(payload).to_vec();
        let mut cuts: Vec<usize> = cuts.iter().map(|x| x % (z.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(z.len());
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &cut) in cuts.iter().enumerate() {
            let at = out.len();
            let fin = i + 1 == cuts.len();
            encode_frame(
                &mut out,
                if i == 0 { op } else { K },
                fin,
                &z[start..cut],
                M,
            );
            if i == 0 {
                crate::ws::deflate::set_rsv1(&mut out, at);
            }
            if ping_between && !fin {
                encode_frame(&mut out, P, true, b"p", M);
            }
            start = cut;
        }
        out
    }

    #[test]
    fn compressed_messages() {
        let limits = Limits::default();
        let text = "héllo ".repeat(300);
        for cuts in [&[][..], &[3], &[1, 2, 50, 51]] {
            let mut bytes = z_frames(T, text.as_bytes(), cuts, true);
            bytes.extend(z_frames(B, &[7; 1000], cuts, false));
            encode_frame(&mut bytes, T, true, b"plain", M);
            for step in [1, 5, 64, usize::MAX] {
                let mut rx = Receiver::with_deflate(Role::Server, false);
                let mut inf = Inflater::new();
                let (msgs, err) = run_z(&mut rx, &mut inf, &bytes, step, &limits);
                assert_eq!(err, None);
                let pings = if cuts.is_empty() { 0 } else { cuts.len() };
                assert_eq!(msgs.len(), pings + 3);
                assert_eq!(msgs[pings], Owned::Text(text.clone()));
                assert_eq!(msgs[pings + 1], Owned::Binary(vec![7; 1000]));
                assert_eq!(msgs[pings + 2], text_owned("plain"));
                rx.feed(&mut [], &limits).unwrap();
                assert_eq!(rx.heap_bytes(), 0);
            }
        }
    }

    fn text_owned(s: &str) -> Owned {
        Owned::Text(s.into())
    }

    #[test]
    fn rsv1_rules() {
        let limits = Limits::default();
        let mut inf = Inflater::new();
        // Not negotiated: any RSV1 is 1002.
        let bytes = z_frames(T, b"hi", &[], false);
        let (_, err) = run_all(Role::Server, &bytes, &limits);
        assert_eq!(err, Some(ProtocolError::ReservedBits));
        // Negotiated: RSV1 on a control frame or a continuation is 1002.
        let mut ping = Vec::new();
        encode_frame(&mut ping, P, true, b"x", M);
        ping[0] |= 0x40;
        let mut cont = Vec::new();
        encode_frame(&mut cont, T, false, b"a", M);
        let at = cont.len();
        encode_frame(&mut cont, K, true, b"b", M);
        cont[at] |= 0x40;
        for bytes in [ping, cont] {
            let mut rx = Receiver::with_deflate(Role::Server, false);
            let (_, err) = run_z(&mut rx, &mut inf, &bytes, 1, &limits);
            assert_eq!(err, Some(ProtocolError::UnexpectedCompression));
            assert_eq!(err.unwrap().close_code(), 1002);
            assert!(rx.is_failed());
        }
        // RSV2/RSV3 stay errors.
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let (_, err) = run_z(&mut rx, &mut inf, &[0xA1, 0x80, 0, 0, 0, 0], 1, &limits);
        assert_eq!(err, Some(ProtocolError::ReservedBits));
        // A compressed message without an inflater.
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let mut bytes = z_frames(T, b"hi", &[], false);
        assert_eq!(
            rx.feed(&mut bytes, &limits).err(),
            Some(ProtocolError::UnexpectedCompression)
        );
        // Bad deflate data is 1007; bad UTF-8 inside is 1007.
        let mut bad = Vec::new();
        encode_frame(&mut bad, B, true, &[0xff, 0xff, 0xff], M);
        bad[0] |= 0x40;
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let (_, err) = run_z(&mut rx, &mut inf, &bad, usize::MAX, &limits);
        assert_eq!(err.map(|e| e.close_code()), Some(1007));
        let bytes = z_frames(T, b"ok\xff", &[1], false);
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let (_, err) = run_z(&mut rx, &mut inf, &bytes, 3, &limits);
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn incompressible_message_at_the_limit_fits() {
        let limits = Limits {
            max_frame: 1000,
            max_message: 1000,
        };
        let data: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut z = crate::ws::deflate::Deflater::with_level(0);
        let wire = z.compress(&data).to_vec();
        assert!(wire.len() > 1000);
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, B, true, &wire, M);
        bytes[0] |= 0x40;
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let mut inf = Inflater::new();
        let (msgs, err) = run_z(&mut rx, &mut inf, &bytes, usize::MAX, &limits);
        assert_eq!((msgs, err), (vec![Owned::Binary(data)], None));
        // An uncompressed frame on the same connection is still held to 1000.
        let mut plain = Vec::new();
        encode_frame(&mut plain, B, true, &[0; 1001], M);
        let (_, err) = run_z(&mut rx, &mut inf, &plain, usize::MAX, &limits);
        assert_eq!(err, Some(ProtocolError::MessageTooLarge));
    }

    #[test]
    fn compressed_bombs_are_1009() {
        let limits = Limits {
            max_frame: 64 << 10,
            max_message: 64 << 10,
        };
        let big = vec![b'z'; 64 << 20];
        let mut inf = Inflater::new();
        for cuts in [&[][..], &[10, 20, 30]] {
            let bytes = z_frames(B, &big, cuts, false);
            assert!(bytes.len() < 64 << 10);
            let mut rx = Receiver::with_deflate(Role::Server, false);
            let (msgs, err) = run_z(&mut rx, &mut inf, &bytes, 4096, &limits);
            assert_eq!((msgs, err), (vec![], Some(ProtocolError::MessageTooLarge)));
            assert!(inf.heap_bytes() <= limits.max_message + 1);
            assert!(rx.heap_bytes() <= wire_limit(limits.max_message) + MAX_CONTROL_PAYLOAD);
        }
        // The compressed size is bounded too.
        let mut rx = Receiver::with_deflate(Role::Server, false);
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, B, false, &[0; 60 << 10], M);
        bytes[0] |= 0x40;
        encode_frame(&mut bytes, K, true, &[0; 20 << 10], M);
        let (_, err) = run_z(&mut rx, &mut inf, &bytes, usize::MAX, &limits);
        assert_eq!(err, Some(ProtocolError::MessageTooLarge));
    }

    /// One step of a generated stream: a data message cut into fragments,
    /// with optional pings between them.
    #[derive(Clone, Debug)]
    struct Msg {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        ping_after: Vec<bool>,
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        (
            any::<bool>(),
            "\\PC{0,40}",
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(0usize..200, 0..4),
            proptest::collection::vec(any::<bool>(), 4),
        )
            .prop_map(|(text, s, bin, cuts, ping_after)| Msg {
                text,
                payload: if text { s.into_bytes() } else { bin },
                cuts,
                ping_after,
            })
    }

    /// Encode messages for `role`'s peer; returns bytes and the expected output.
    fn encode_stream(msgs: &[Msg], role: Role, mask: [u8; 4]) -> (Vec<u8>, Vec<Owned>) {
        let mask = (role == Role::Server).then_some(mask);
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for m in msgs {
            let mut cuts: Vec<usize> = m.cuts.iter().map(|c| c % (m.payload.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(m.payload.len());
            let mut start = 0;
            for (i, &cut) in cuts.iter().enumerate() {
                let op = match (i, m.text) {
                    (0, true) => T,
                    (0, false) => B,
                    _ => K,
                };
                let fin = i + 1 == cuts.len();
                encode_frame(&mut bytes, op, fin, &m.payload[start..cut], mask);
                start = cut;
                if !fin && m.ping_after.get(i).copied().unwrap_or(false) {
                    encode_frame(&mut bytes, P, true, &[i as u8], mask);
                    expected.push(Owned::Ping(vec![i as u8]));
                }
            }
            expected.push(if m.text {
                Owned::Text(String::from_utf8(m.payload.clone()).unwrap())
            } else {
                Owned::Binary(m.payload.clone())
            });
        }
        (bytes, expected)
    }

    fn split_run(
        role: Role,
        bytes: &[u8],
        cuts: &[usize],
        limits: &Limits,
    ) -> (Vec<Owned>, Option<ProtocolError>) {
        let mut rx = Receiver::new(role);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut data = bytes.to_vec();
        let mut out = Vec::new();
        let mut start = 0;
        for cut in cuts {
            let piece = &mut data[start..cut];
            start = cut;
            let mut pos = 0;
            loop {
                match rx.feed(&mut piece[pos..], limits) {
                    Err(e) => return (out, Some(e)),
                    Ok((n, Some(m))) => {
                        pos += n;
                        out.push(own(m));
                    }
                    Ok((_, None)) => break,
                }
            }
        }
        (out, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_split_yields_the_same_messages(
            msgs in proptest::collection::vec(msg_strategy(), 0..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            server in any::<bool>(),
            mask in any::<[u8; 4]>(),
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let (bytes, expected) = encode_stream(&msgs, role, mask);
            let limits = Limits::default();
            prop_assert_eq!(split_run(role, &bytes, &cuts, &limits), (expected.clone(), None));
            prop_assert_eq!(run(&mut Receiver::new(role), &bytes, 1, &limits), (expected, None));
        }

        #[test]
        fn compressed_any_split(
            msgs in proptest::collection::vec(msg_strategy(), 0..4),
            zcuts in proptest::collection::vec(any::<usize>(), 0..4),
            step in 1usize..200,
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                if i % 2 == 0 {
                    bytes.extend(z_frames(if m.text { T } else { B }, &m.payload, &zcuts, i % 4 == 0));
                    if i % 4 == 0 {
                        expected.extend(std::iter::repeat(Owned::Ping(b"p".to_vec())).take(zcuts.len()));
                    }
                } else {
                    encode_frame(&mut bytes, if m.text { T } else { B }, true, &m.payload, M);
                }
                expected.push(if m.text {
                    Owned::Text(String::from_utf8(m.payload.clone()).unwrap())
                } else {
                    Owned::Binary(m.payload.clone())
                });
            }
            let mut rx = Receiver::with_deflate(Role::Server, false);
            let mut inf = Inflater::new();
            prop_assert_eq!(run_z(&mut rx, &mut inf, &bytes, step, &Limits::default()), (expected, None));
        }

        #[test]
        fn invalid_input_yields_its_close_code(
            prefix in proptest::collection::vec(msg_strategy(), 0..3),
            class in 0usize..12,
            byte in any::<u8>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let role = Role::Server;
            let (mut bytes, expected) = encode_stream(&prefix, role, [1, 2, 3, 4]);
            let mask = Some([9, 8, 7, 6]);
            let (code, bad): (u16, Vec<u8>) = match class {
                0 => (1002, vec![0x81 | ((byte % 7 + 1) << 4), 0x80, 0, 0, 0, 0]),
                1 => (1002, vec![0x80 | [3, 4, 5, 6, 7, 11, 12, 13, 14, 15][usize::from(byte) % 10], 0x80, 0, 0, 0, 0]),
                2 => (1002, vec![0x09, 0x80, 0, 0, 0, 0]),
                3 => (1002, vec![0x89, 0x80 | 126, 0, 126]),
                4 => (1002, vec![0x82, 0x05, 1, 2, 3, 4, 5]),
                5 => { let mut b = Vec::new(); encode_frame(&mut b, K, true, &[byte], mask); (1002, b) }
                6 => { let mut b = Vec::new(); encode_frame(&mut b, T, false, b"a", mask); encode_frame(&mut b, B, true, b"b", mask); (1002, b) }
                7 => { let mut b = Vec::new(); encode_frame(&mut b, T, true, &[b'a', 0xF8 | byte], mask); (1007, b) }
                8 => { let mut b = Vec::new(); encode_frame(&mut b, C, true, &[byte], mask); (1002, b) }
                9 => { let mut b = Vec::new(); encode_frame(&mut b, C, true, &[0x03, 0xEE], mask); (1002, b) } // 1006
                10 => { let mut b = Vec::new(); encode_frame(&mut b, C, true, &[0x03, 0xE8, 0xC0 | (byte & 1)], mask); (1007, b) }
                _ => { let mut b = Vec::new(); encode_frame(&mut b, B, true, &vec![0; 300], mask); (1009, b) }
            };
            bytes.extend_from_slice(&bad);
            let limits = Limits { max_frame: 256, max_message: 1 << 20 };
            let (got, err) = split_run(role, &bytes, &cuts, &limits);
            prop_assert_eq!(got, expected);
            prop_assert_eq!(err.map(|e| e.close_code()), Some(code));
        }
    }
}
