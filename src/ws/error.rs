//! The protocol errors of the `ws` layer, each carrying the RFC 6455 close
//! code it is answered with. Kept apart from the frame, message and close
//! modules, which all produce them, so none of those imports another for it.

use std::fmt;

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
    /// 1002: RSV1 ("per-message compressed", RFC 7692) on a control frame, on
    /// a continuation frame, or on any frame when permessage-deflate was not
    /// negotiated.
    UnexpectedCompression,
    /// 1007: a compressed message whose payload is not valid raw DEFLATE data.
    BadCompressedData,
}

impl ProtocolError {
    /// The RFC 6455 status code to close the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => 1009,
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReason
            | ProtocolError::BadCompressedData => 1007,
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
            ProtocolError::UnexpectedCompression => {
                f.write_str("unexpected RSV1 (compression) bit")
            }
            ProtocolError::BadCompressedData => f.write_str("invalid compressed data"),
        }
    }
}

impl std::error::Error for ProtocolError {}
