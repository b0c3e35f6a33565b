//! RFC 6455 frames (section 5): the incremental decoder and the encoder.
//!
//! The decoder is a small state machine fed byte slices of any size. A header
//! that arrives in pieces spills into a fixed array inside the state; payload
//! bytes are handed out as they arrive, unmasked in place in the caller's
//! buffer, so the payload is never copied by the decoder. Every header rule is
//! checked as soon as the byte carrying it is seen.

use super::error::ProtocolError;
use super::mask::apply_mask;

/// Which end of the connection this is; it decides the masking rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Requires masked input frames (clients must mask).
    Server,
    /// Rejects masked input frames (servers must not mask).
    Client,
}

/// Frame opcodes defined by RFC 6455; the reserved ones are rejected while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: the next fragment of a Text or Binary message.
    Continuation,
    /// 0x1: start of a UTF-8 text message.
    Text,
    /// 0x2: start of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble `n`, or `None` for a reserved value.
    pub const fn from_u8(n: u8) -> Option<OpCode> {
        match n {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong: never fragmented, at most 125 payload bytes.
    pub const fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last fragment of its message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Payload length in bytes.
    pub len: u64,
    /// Masking key, present exactly when the frame was masked.
    pub mask: Option<[u8; 4]>,
    /// RSV1: the message this frame starts is compressed (RFC 7692). Only
    /// ever true when the caller allowed it, and only on Text or Binary.
    pub rsv1: bool,
}

/// Parse a frame header at the start of `buf`, with no extension negotiated
/// (every RSV bit is an error).
///
/// Returns `Ok(None)` when `buf` holds only part of the header; the rules that
/// the available bytes already decide are checked anyway, so a bad frame fails
/// on its first byte. On success returns the header and its length in bytes.
pub fn parse_header(
    buf: &[u8],
    role: Role,
    max_frame: u64,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    parse_header_ext(buf, role, max_frame, false)
}

/// [`parse_header`] with permessage-deflate negotiated when `deflate`: RSV1
/// is then allowed on the first frame of a Text or Binary message and is
/// [`ProtocolError::UnexpectedCompression`] (1002) on a control or
/// continuation frame (RFC 7692 section 6). RSV2 and RSV3 are always errors.
pub fn parse_header_ext(
    buf: &[u8],
    role: Role,
    max_frame: u64,
    deflate: bool,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(ProtocolError::ReservedBits);
    }
    let Some(opcode) = OpCode::from_u8(b0 & 0x0F) else {
        return Err(ProtocolError::ReservedOpcode(b0 & 0x0F));
    };
    if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(ProtocolError::UnexpectedCompression);
    }
    let fin = b0 & 0x80 != 0;
    if !fin && opcode.is_control() {
        return Err(ProtocolError::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(ProtocolError::ControlTooLong);
    }
    let (len, mut pos) = match len7 {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => {
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::BadLength);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > max_frame {
        return Err(ProtocolError::FrameTooLarge);
    }
    let mask = if masked {
        match buf.get(pos..pos + 4) {
            Some(&[a, b, c, d]) => {
                pos += 4;
                Some([a, b, c, d])
            }
            _ => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin,
            opcode,
            len,
            mask,
            rsv1,
        },
        pos,
    )))
}

/// A piece of one frame's payload, already unmasked, as returned by
/// [`FrameDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// FIN bit of the frame.
    pub fin: bool,
    /// Opcode of the frame.
    pub opcode: OpCode,
    /// The header was completed by this call: `payload` starts the frame's
    /// payload (each frame yields exactly one such chunk, maybe empty).
    pub first: bool,
    /// Payload bytes of the frame still to come after this chunk.
    pub remaining: u64,
    /// RSV1 of the frame; reported on its first chunk only (`first`).
    pub compressed: bool,
    /// Unmasked payload bytes; they are the last bytes consumed by the call.
    pub payload: &'a [u8],
}

impl Chunk<'_> {
    /// This chunk ends the frame.
    pub fn is_last(&self) -> bool {
        self.remaining == 0
    }
}

/// Incremental frame decoder.
///
/// Invariants: `spill_len > 0` only while between frames with a partial header
/// (then `spill[..spill_len]` is that header prefix and passed every check its
/// bytes decide); `in_payload` while `remaining` payload bytes of the frame
/// described by `fin`/`opcode` are due, with `mask` rotated to the next offset.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    remaining: u64,
    mask: [u8; 4],
    spill: [u8; MAX_HEADER_LEN],
    spill_len: u8,
    in_payload: bool,
    fin: bool,
    opcode: OpCode,
    role: Role,
    /// permessage-deflate was negotiated: RSV1 may start a data message.
    deflate: bool,
}

impl FrameDecoder {
    /// A decoder at the start of a stream, for the given role.
    pub const fn new(role: Role) -> Self {
        FrameDecoder {
            remaining: 0,
            mask: [0; 4],
            spill: [0; MAX_HEADER_LEN],
            spill_len: 0,
            in_payload: false,
            fin: false,
            opcode: OpCode::Continuation,
            role,
            deflate: false,
        }
    }

    /// Allow RSV1 on the first frame of data messages (permessage-deflate
    /// negotiated); call before the first byte is decoded.
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// Whether RSV1 is allowed (see [`FrameDecoder::set_deflate`]).
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// The role this decoder enforces.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True at a frame boundary with no partial header held.
    pub fn is_idle(&self) -> bool {
        !self.in_payload && self.spill_len == 0
    }

    /// Decode from `input`: completes a header if one is pending, then takes
    /// as much of the current frame's payload as `input` holds, unmasking it in
    /// place. Stops at the end of a frame, so one call yields at most one chunk.
    ///
    /// Inlined: it runs once per frame, and per-frame overhead is what limits
    /// small frames.
    ///
    /// Returns `(consumed, None)` when every byte went into a partial header
    /// (or `input` was empty while payload is due); otherwise the chunk, whose
    /// payload is `input[consumed - payload.len()..consumed]`.
    #[inline]
    pub fn decode<'a>(
        &mut self,
        input: &'a mut [u8],
        max_frame: u64,
    ) -> Result<(usize, Option<Chunk<'a>>), ProtocolError> {
        let first = !self.in_payload;
        let mut pos = 0;
        let mut compressed = false;
        if first {
            let old = usize::from(self.spill_len);
            let (header, used) = if old == 0 {
                match parse_header_ext(input, self.role, max_frame, self.deflate)? {
                    Some(found) => found,
                    None => {
                        // Shorter than a header, so it fits the spill array.
                        let k = input.len().min(MAX_HEADER_LEN);
                        self.spill[..k].copy_from_slice(&input[..k]);
                        self.spill_len = k as u8;
                        return Ok((input.len(), None));
                    }
                }
            } else {
                let k = (MAX_HEADER_LEN - old).min(input.len());
                self.spill[old..old + k].copy_from_slice(&input[..k]);
                match parse_header_ext(&self.spill[..old + k], self.role, max_frame, self.deflate)?
                {
                    // The first `old` bytes were not a whole header, so n > old.
                    Some((header, n)) => (header, n.saturating_sub(old)),
                    None => {
                        // Fewer than MAX_HEADER_LEN bytes in total: all of input was taken.
                        self.spill_len = (old + k) as u8;
                        return Ok((input.len(), None));
                    }
                }
            };
            self.spill_len = 0;
            self.in_payload = true;
            self.fin = header.fin;
            self.opcode = header.opcode;
            self.remaining = header.len;
            self.mask = header.mask.unwrap_or([0; 4]);
            compressed = header.rsv1;
            pos = used;
        } else if input.is_empty() {
            return Ok((0, None));
        }
        let rest = input.get_mut(pos..).unwrap_or_default();
        let take = match usize::try_from(self.remaining) {
            Ok(r) if r < rest.len() => r,
            _ => rest.len(),
        };
        let payload = &mut rest[..take];
        if self.role == Role::Server {
            apply_mask(payload, self.mask);
            self.mask.rotate_left(take & 3);
        }
        self.remaining -= take as u64;
        if self.remaining == 0 {
            self.in_payload = false;
        }
        Ok((
            pos + take,
            Some(Chunk {
                fin: self.fin,
                opcode: self.opcode,
                first,
                remaining: self.remaining,
                compressed,
                payload,
            }),
        ))
    }
}

/// Length of the header `encode_header` writes for this payload length.
pub const fn header_len(payload_len: usize, masked: bool) -> usize {
    let ext = if payload_len < 126 {
        0
    } else if payload_len <= u16::MAX as usize {
        2
    } else {
        8
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Append a frame header announcing `payload_len` bytes (shortest length
/// encoding); the payload must follow, masked with `mask` when given.
#[inline]
pub fn encode_header(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) {
    let b0 = (u8::from(fin) << 7) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if payload_len < 126 {
        out.extend_from_slice(&[b0, mask_bit | payload_len as u8]);
    } else if let Ok(len16) = u16::try_from(payload_len) {
        let l = len16.to_be_bytes();
        out.extend_from_slice(&[b0, mask_bit | 126, l[0], l[1]]);
    } else {
        out.extend_from_slice(&[b0, mask_bit | 127]);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Write one frame into `out` (no intermediate allocation). `mask`: Some for client role frames.
#[inline]
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    // Small unmasked frames (chat lines from the server) inline to a few
    // stores and a copy; everything else takes the general path.
    if mask.is_none() && payload.len() < 126 {
        out.reserve(2 + payload.len());
        let b0 = (u8::from(fin) << 7) | opcode.as_u8();
        out.extend_from_slice(&[b0, payload.len() as u8]);
        out.extend_from_slice(payload);
    } else {
        encode_frame_general(out, opcode, fin, payload, mask);
    }
}

fn encode_frame_general(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    // An upper bound instead of the exact header length: one branch-free
    // reserve, at most 10 bytes of slack.
    out.reserve(MAX_HEADER_LEN + payload.len());
    encode_header(out, opcode, fin, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

/// A close frame: no payload when `code` is None; otherwise code + reason
/// (reason truncated to fit 125 bytes on a char boundary).
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str, mask: Option<[u8; 4]>) {
    let Some(code) = code else {
        encode_frame(out, OpCode::Close, true, &[], mask);
        return;
    };
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.as_bytes().get(..end).unwrap_or_default();
    let len = 2 + reason.len();
    out.reserve(header_len(len, mask.is_some()) + len);
    encode_header(out, OpCode::Close, true, len, mask);
    let start = out.len();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Decode `bytes` fed `step` bytes at a time; returns the frames
    /// (header fields and reassembled payload) or the first error.
    fn decode_all(
        role: Role,
        bytes: &[u8],
        step: usize,
        max_frame: u64,
    ) -> Result<Vec<(bool, OpCode, Vec<u8>)>, ProtocolError> {
        let mut dec = FrameDecoder::new(role);
        let mut data = bytes.to_vec();
        let mut frames = Vec::new();
        let mut current = Vec::new();
        for piece in data.chunks_mut(step.max(1)) {
            let len = piece.len();
            let mut pos = 0;
            loop {
                let (n, chunk) = dec.decode(&mut piece[pos..], max_frame)?;
                pos += n;
                let Some(c) = chunk else { break };
                assert!(n > 0 || c.first);
                current.extend_from_slice(c.payload);
                if c.is_last() {
                    frames.push((c.fin, c.opcode, std::mem::take(&mut current)));
                }
                if pos == len && !c.is_last() {
                    break;
                }
            }
            assert_eq!(pos, len);
        }
        assert!(dec.is_idle(), "trailing partial frame");
        Ok(frames)
    }

    #[test]
    fn rfc_5_7_examples_decode() {
        let single = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frag = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for step in [1, 2, 3, 100] {
            let hello = b"Hello".to_vec();
            assert_eq!(
                decode_all(Role::Client, &single, step, 1 << 20),
                Ok(vec![(true, OpCode::Text, hello.clone())])
            );
            assert_eq!(
                decode_all(Role::Server, &masked, step, 1 << 20),
                Ok(vec![(true, OpCode::Text, hello.clone())])
            );
            assert_eq!(
                decode_all(Role::Client, &frag, step, 1 << 20),
                Ok(vec![
                    (false, OpCode::Text, b"Hel".to_vec()),
                    (true, OpCode::Continuation, b"lo".to_vec())
                ])
            );
            assert_eq!(
                decode_all(Role::Client, &ping, step, 1 << 20),
                Ok(vec![(true, OpCode::Ping, hello.clone())])
            );
            assert_eq!(
                decode_all(Role::Server, &pong, step, 1 << 20),
                Ok(vec![(true, OpCode::Pong, hello)])
            );
        }
    }

    #[test]
    fn rfc_5_7_examples_encode() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, true, b"Hello", None);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        encode_frame(&mut out, OpCode::Text, true, b"Hello", Some(MASK));
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        out.clear();
        encode_frame(&mut out, OpCode::Text, false, b"Hel", None);
        encode_frame(&mut out, OpCode::Continuation, true, b"lo", None);
        assert_eq!(out, [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
        out.clear();
        encode_frame(&mut out, OpCode::Ping, true, b"Hello", None);
        assert_eq!(out, [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        encode_frame(&mut out, OpCode::Pong, true, b"Hello", Some(MASK));
        assert_eq!(
            out,
            [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn rfc_5_7_long_lengths() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Binary, true, &[7; 256], None);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        let frames = decode_all(Role::Client, &out, 1, 1 << 20).unwrap();
        assert_eq!(frames, vec![(true, OpCode::Binary, vec![7; 256])]);

        let payload = vec![9u8; 65536];
        out.clear();
        encode_frame(&mut out, OpCode::Binary, true, &payload, None);
        assert_eq!(out[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), 10 + 65536);
        let frames = decode_all(Role::Client, &out, 1000, 1 << 20).unwrap();
        assert_eq!(frames, vec![(true, OpCode::Binary, payload)]);
    }

    #[test]
    fn length_boundaries_and_non_minimal_encodings() {
        for len in [0usize, 1, 125, 126, 127, 128, 65535, 65536] {
            let payload = vec![0xAB; len];
            for role in [Role::Server, Role::Client] {
                let mask = (role == Role::Server).then_some(MASK);
                let mut out = Vec::new();
                encode_frame(&mut out, OpCode::Binary, true, &payload, mask);
                assert_eq!(out.len(), header_len(len, mask.is_some()) + len);
                let got = decode_all(role, &out, 7, 1 << 20).unwrap();
                assert_eq!(got, vec![(true, OpCode::Binary, payload.clone())]);
            }
        }
        // 5 announced with a 16-bit and a 64-bit length: accepted.
        let a = [0x82, 126, 0, 5, 1, 2, 3, 4, 5];
        let b = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5];
        for bytes in [&a[..], &b[..]] {
            let got = decode_all(Role::Client, bytes, 1, 100).unwrap();
            assert_eq!(got, vec![(true, OpCode::Binary, vec![1, 2, 3, 4, 5])]);
        }
    }

    fn first_error(role: Role, bytes: &[u8], max_frame: u64) -> ProtocolError {
        let whole = decode_all(role, bytes, usize::MAX, max_frame).unwrap_err();
        let bytewise = decode_all(role, bytes, 1, max_frame).unwrap_err();
        assert_eq!(whole, bytewise);
        whole
    }

    #[test]
    fn header_rules_with_close_codes() {
        use ProtocolError::*;
        let cases: &[(Role, &[u8], ProtocolError)] = &[
            (Role::Server, &[0x81, 0x00], UnmaskedFrame),
            (Role::Client, &[0x81, 0x80, 1, 2, 3, 4], MaskedFrame),
            (Role::Client, &[0xC1, 0x00], ReservedBits),
            (Role::Client, &[0xA1, 0x00], ReservedBits),
            (Role::Client, &[0x91, 0x00], ReservedBits),
            (Role::Client, &[0xF9, 0x00], ReservedBits),
            (Role::Client, &[0x83, 0x00], ReservedOpcode(3)),
            (Role::Client, &[0x87, 0x00], ReservedOpcode(7)),
            (Role::Client, &[0x8B, 0x00], ReservedOpcode(11)),
            (Role::Client, &[0x8F, 0x00], ReservedOpcode(15)),
            (Role::Client, &[0x09, 0x00], FragmentedControl),
            (Role::Client, &[0x08, 0x00], FragmentedControl),
            (Role::Client, &[0x89, 126, 0, 126], ControlTooLong),
            (
                Role::Client,
                &[0x88, 127, 0, 0, 0, 0, 0, 0, 0, 1],
                ControlTooLong,
            ),
            (
                Role::Client,
                &[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
                BadLength,
            ),
            (
                Role::Client,
                &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 1],
                FrameTooLarge,
            ),
        ];
        for (role, bytes, expected) in cases {
            let err = first_error(*role, bytes, 65536);
            assert_eq!(&err, expected, "{bytes:x?}");
            let code = if matches!(err, FrameTooLarge) {
                1009
            } else {
                1002
            };
            assert_eq!(err.close_code(), code);
        }
        // A 125-byte ping is fine; the error comes only with the header's own byte.
        let mut ok = vec![0x89, 125];
        ok.extend_from_slice(&[0; 125]);
        assert!(decode_all(Role::Client, &ok, 1, 1 << 20).is_ok());
    }

    #[test]
    fn fails_on_first_offending_byte() {
        let mut dec = FrameDecoder::new(Role::Server);
        // RSV bit visible in the first byte: no need to wait for the length.
        assert_eq!(
            dec.decode(&mut [0xC1], 100),
            Err(ProtocolError::ReservedBits)
        );
        let mut dec = FrameDecoder::new(Role::Server);
        assert_eq!(dec.decode(&mut [0x82, 0xFF, 0, 0], 100).map(|r| r.0), Ok(4));
        assert_eq!(
            dec.decode(&mut [0, 0, 0, 0, 1, 0], 100).err(),
            Some(ProtocolError::FrameTooLarge)
        );
    }

    #[test]
    fn close_encoding_truncates_on_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, None, "ignored", None);
        assert_eq!(out, [0x88, 0x00]);
        out.clear();
        encode_close(&mut out, Some(1000), "bye", Some(MASK));
        let frames = decode_all(Role::Server, &out, 1, 1000).unwrap();
        assert_eq!(frames, vec![(true, OpCode::Close, b"\x03\xe8bye".to_vec())]);
        // 62 two-byte characters = 124 bytes: only 61 fit after the code.
        let long = "é".repeat(62);
        out.clear();
        encode_close(&mut out, Some(1001), &long, None);
        assert_eq!(out[1], 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            frames in proptest::collection::vec(
                (any::<bool>(), 0usize..6, proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 4]>()),
                0..6),
            step in 1usize..64,
            server in any::<bool>(),
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let ops = [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong];
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (fin, op, mut payload, mask) in frames {
                let op = ops[op];
                let fin = fin || op.is_control();
                if op.is_control() { payload.truncate(125); }
                let mask = server.then_some(mask);
                encode_frame(&mut bytes, op, fin, &payload, mask);
                expected.push((fin, op, payload));
            }
            prop_assert_eq!(decode_all(role, &bytes, step, 1 << 20), Ok(expected));
        }
    }
}
