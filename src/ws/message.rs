//! Messages: frame decoding, fragment reassembly, incremental UTF-8 checks
//! and close payload validation, behind one `feed` call.
//!
//! A whole unfragmented frame inside the caller's input is returned borrowing
//! that input (unmasked in place): no copy. Only a message spanning reads or
//! fragments is copied into the receiver's buffer, which exists only while
//! such a message is in flight, so an idle connection holds no heap memory.

use std::fmt;

use super::close::parse_close_payload;
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

/// Every protocol error; each maps to an RFC 6455 close code (1002, 1007, 1009 ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// 1002: a server received a frame without the MASK bit.
    UnmaskedFrame,
    /// 1002: a client received a masked frame.
    MaskedFrame,
    /// 1002: RSV1-3 set although no extension was negotiated.
    ReservedBits,
    /// 1002: opcode 3-7 or 11-15 (the value is carried).
    ReservedOpcode(u8),
    /// 1002: a control frame without FIN.
    FragmentedControl,
    /// 1002: a control frame longer than 125 bytes.
    ControlTooLong,
    /// 1002: a 64-bit length with the most significant bit set.
    BadLength,
    /// 1009: a frame longer than [`Limits::max_frame`].
    FrameTooLarge,
    /// 1009: a message longer than [`Limits::max_message`].
    MessageTooLarge,
    /// 1002: a continuation frame with no fragmented message in progress.
    UnexpectedContinuation,
    /// 1002: a new Text or Binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// 1007: a text message that is not valid UTF-8.
    InvalidUtf8,
    /// 1002: a close payload of exactly one byte.
    BadClosePayload,
    /// 1002: a close code that may not appear on the wire (the code is carried).
    InvalidCloseCode(u16),
    /// 1007: a close reason that is not valid UTF-8.
    InvalidCloseReason,
}

impl ProtocolError {
    /// The RFC 6455 status code to close the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => 1009,
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReason => 1007,
            _ => 1002,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnmaskedFrame => f.write_str("unmasked frame from client"),
            ProtocolError::MaskedFrame => f.write_str("masked frame from server"),
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op}"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::ControlTooLong => f.write_str("control frame over 125 bytes"),
            ProtocolError::BadLength => f.write_str("invalid frame length"),
            ProtocolError::FrameTooLarge => f.write_str("frame too large"),
            ProtocolError::MessageTooLarge => f.write_str("message too large"),
            ProtocolError::UnexpectedContinuation => f.write_str("continuation without a message"),
            ProtocolError::ExpectedContinuation => f.write_str("expected a continuation frame"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            ProtocolError::BadClosePayload => f.write_str("one-byte close payload"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            ProtocolError::InvalidCloseReason => f.write_str("invalid UTF-8 in close reason"),
        }
    }
}

impl std::error::Error for ProtocolError {}

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
    /// `input[start..end]`.
    Input(Kind, usize, usize),
    /// `buf[start..]`.
    Buffer(Kind, usize),
}

const CLOSING: u8 = 1;
const CLOSED: u8 = 2;
/// A buffered data message was delivered: empty `buf` on the next call.
const RELEASE: u8 = 4;
/// A buffered control frame was delivered: drop its `ctrl_len` bytes from the end of `buf`.
const CTRL_DONE: u8 = 8;

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
        }
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
        self.release_delivered();
        if self.flags & CLOSED != 0 {
            return Ok((input.len(), None));
        }
        let mut pos = 0;
        let done = loop {
            let (n, chunk) = self
                .decoder
                .decode(input.get_mut(pos..).unwrap_or_default(), limits.max_frame)?;
            pos += n;
            let Some(chunk) = chunk else {
                return Ok((input.len(), None));
            };
            let start = pos - chunk.payload.len();
            if let Some(done) = self.on_chunk(chunk, start, pos, limits)? {
                break done;
            }
        };
        let input: &'a [u8] = input;
        let this: &'a Self = self;
        let (kind, payload) = match done {
            Done::Input(kind, start, end) => (kind, input.get(start..end).unwrap_or_default()),
            Done::Buffer(kind, start) => (kind, this.buf.get(start..).unwrap_or_default()),
        };
        let message = match kind {
            Kind::Text => {
                Message::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
            }
            Kind::Binary => Message::Binary(payload),
            Kind::Ping => Message::Ping(payload),
            Kind::Pong => Message::Pong(payload),
            Kind::Close => {
                let (code, reason) = parse_close_payload(payload)?;
                Message::Close { code, reason }
            }
        };
        Ok((pos, Some(message)))
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
            let target = (self.buf.capacity() * 2).max(256).min(cap).max(need);
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
                return Ok(Some(Done::Input(kind, start, end)));
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
            return Ok(Some(Done::Buffer(kind, at)));
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
            let frame_len = chunk.payload.len() as u64 + chunk.remaining;
            // Only data bytes are in `buf` here: control frames never overlap a data frame.
            if self.buf.len() as u64 + frame_len > limits.max_message as u64 {
                return Err(ProtocolError::MessageTooLarge);
            }
            match chunk.opcode {
                OpCode::Text if message_end => {
                    return Ok(Some(Done::Input(Kind::Text, start, end)))
                }
                OpCode::Binary if message_end => {
                    return Ok(Some(Done::Input(Kind::Binary, start, end)))
                }
                OpCode::Text => {
                    self.partial = Partial::Text;
                    self.utf8.reset();
                }
                OpCode::Binary => self.partial = Partial::Binary,
                _ => {}
            }
        }
        let kind = match self.partial {
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
        if matches!(kind, Kind::Text) {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.partial = Partial::None;
        self.flags |= RELEASE;
        Ok(Some(Done::Buffer(kind, 0)))
    }
}
