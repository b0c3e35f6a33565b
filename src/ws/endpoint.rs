//! One end of a WebSocket connection without I/O: the receiver, the close
//! handshake state, the negotiated extension and the role, and the replies
//! RFC 6455 obliges an endpoint to send (a Pong for a Ping, a Close for a
//! Close, a Close carrying the code of a protocol error), written into the
//! caller's output buffer. The server, `loopchat client` and the load
//! generator all follow these rules through it, so they cannot drift apart.
//!
//! It is exactly as large as a [`Receiver`]: the close state and the
//! negotiated extension are bits inside it, so a connection entry does not
//! grow when compression is negotiated.

use super::deflate::{set_rsv1, Agreement, Deflater, Inflater, NARROW_MAX};
use super::error::ProtocolError;
use super::frame::{encode_close, encode_frame, OpCode, Role};
use super::message::{Limits, Message, Receiver};

/// Where the close handshake is (RFC 6455 section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Messages flow both ways.
    Open,
    /// This end sent a Close and waits for the peer's; data the peer still
    /// sends is read and dropped, control frames are still returned.
    SentClose,
    /// The peer's Close arrived and was answered (or answered ours): the
    /// handshake is complete, nothing more is read or sent.
    GotClose,
    /// The peer broke the protocol; this end sent a Close with the error's
    /// code (unless it had sent one already) and reads nothing more.
    Failed,
}

/// What was negotiated for the sending side, as a copyable value: whether a
/// message goes out compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendPolicy {
    /// permessage-deflate was negotiated.
    pub deflate: bool,
    /// The peer narrowed the server's window (see [`Agreement::narrow`]).
    pub narrow: bool,
}

impl SendPolicy {
    /// Whether a data message of `len` bytes goes out compressed: compression
    /// was negotiated, the message is at least `threshold` bytes, and it fits
    /// the peer's window when the peer narrowed it.
    pub fn compresses(&self, len: usize, threshold: usize) -> bool {
        self.deflate && len >= threshold && (!self.narrow || len <= NARROW_MAX)
    }
}

/// A sans-I/O WebSocket endpoint (see the module docs).
#[derive(Debug)]
pub struct Endpoint {
    rx: Receiver,
}

impl Endpoint {
    /// An endpoint for `role` without extensions.
    pub fn new(role: Role) -> Self {
        Endpoint {
            rx: Receiver::new(role),
        }
    }

    /// An endpoint for `role` with permessage-deflate when `deflate` holds an
    /// agreement.
    pub fn with_deflate(role: Role, deflate: Option<Agreement>) -> Self {
        Endpoint {
            rx: match deflate {
                Some(a) => Receiver::with_deflate(role, a.narrow()),
                None => Receiver::new(role),
            },
        }
    }

    /// A fresh endpoint with the same role and negotiated extension as one
    /// with `policy` (e.g. a stand-in while the real one is lent out).
    pub fn with_policy(role: Role, policy: SendPolicy) -> Self {
        Endpoint {
            rx: if policy.deflate {
                Receiver::with_deflate(role, policy.narrow)
            } else {
                Receiver::new(role)
            },
        }
    }

    /// The negotiated sending side.
    pub fn policy(&self) -> SendPolicy {
        SendPolicy {
            deflate: self.rx.deflate(),
            narrow: self.rx.narrow(),
        }
    }

    /// The role (servers read masked frames and send unmasked ones).
    pub fn role(&self) -> Role {
        self.rx.role()
    }

    /// permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.rx.deflate()
    }

    /// Where the close handshake is.
    pub fn state(&self) -> CloseState {
        if self.rx.is_failed() {
            CloseState::Failed
        } else if self.rx.is_closed() {
            CloseState::GotClose
        } else if self.rx.is_closing() {
            CloseState::SentClose
        } else {
            CloseState::Open
        }
    }

    /// Heap bytes held by a message in progress (0 when idle).
    pub fn heap_bytes(&self) -> usize {
        self.rx.heap_bytes()
    }

    /// Whether a data message of `len` bytes goes out compressed: compression
    /// was negotiated, the message is at least `threshold` bytes, and it fits
    /// the peer's window when the peer narrowed it.
    pub fn compresses(&self, len: usize, threshold: usize) -> bool {
        self.policy().compresses(len, threshold)
    }

    /// Read from `input` until one message completes or the input is used up,
    /// like [`Receiver::feed_with`], and append to `out` what the protocol
    /// obliges this end to answer:
    ///
    /// - a Ping is answered with a Pong carrying its payload while open;
    /// - a Close is answered with a Close echoing its code (1000 for an empty
    ///   one) unless this end already sent one; the state is then `GotClose`;
    /// - a protocol error is answered with a Close carrying its code (1002,
    ///   1007, 1009) unless this end already sent one; the state is `Failed`
    ///   and the error is returned for logging.
    ///
    /// `mask`: the masking key for a reply (client role; `None` for a server).
    /// Messages are still returned (Ping and Close too) so the caller can
    /// count or log them; after `GotClose` or `Failed` input is ignored.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: &Limits,
        inflater: Option<&'a mut Inflater>,
        out: &mut Vec<u8>,
        mask: Option<[u8; 4]>,
    ) -> Result<(usize, Option<Message<'a>>), ProtocolError> {
        let was_open = self.state() == CloseState::Open;
        let result = self.rx.feed_with(input, limits, inflater);
        match &result {
            Ok((_, Some(Message::Ping(p)))) if was_open => {
                encode_frame(out, OpCode::Pong, true, p, mask);
            }
            Ok((_, Some(Message::Close { code, .. }))) if was_open => {
                encode_close(out, Some(code.unwrap_or(1000)), "", mask);
            }
            Err(e) if was_open => {
                encode_close(out, Some(e.close_code()), &e.to_string(), mask);
            }
            _ => {}
        }
        result
    }

    /// Give back the buffer of a message returned by the last [`Endpoint::read`]
    /// once the caller is done with it, so an idle endpoint holds no heap.
    pub fn release(&mut self, limits: &Limits) {
        if self.rx.heap_bytes() > 0 {
            let _ = self.rx.feed(&mut [], limits);
        }
    }

    /// Start the close handshake: append a Close with `code` and `reason`
    /// (`code` `None`: an empty Close) unless one was sent or the connection
    /// is finished. Returns whether a frame was written.
    pub fn close(
        &mut self,
        out: &mut Vec<u8>,
        code: Option<u16>,
        reason: &str,
        mask: Option<[u8; 4]>,
    ) -> bool {
        self.start_close(out, code, reason, mask, false)
    }

    /// [`Endpoint::close`] that keeps returning the data messages the peer
    /// sent before it answers the Close: for a client that sent its last
    /// lines and closed, and still wants their replies. Control frames are
    /// not answered any more either way.
    pub fn close_keep_reading(
        &mut self,
        out: &mut Vec<u8>,
        code: Option<u16>,
        reason: &str,
        mask: Option<[u8; 4]>,
    ) -> bool {
        self.start_close(out, code, reason, mask, true)
    }

    fn start_close(
        &mut self,
        out: &mut Vec<u8>,
        code: Option<u16>,
        reason: &str,
        mask: Option<[u8; 4]>,
        keep_reading: bool,
    ) -> bool {
        if self.state() != CloseState::Open {
            return false;
        }
        encode_close(out, code, reason, mask);
        if keep_reading {
            self.rx.set_close_sent();
        } else {
            self.rx.set_closing();
        }
        true
    }

    /// Mark the close as sent by someone else (a caller that wrote the frame
    /// itself, e.g. into a shared buffer).
    pub fn set_closing(&mut self) {
        self.rx.set_closing();
    }

    /// Append one data message (unfragmented), compressed with the shared
    /// `deflater` when [`Endpoint::compresses`] says so. Nothing is written
    /// once a Close was sent or received (RFC 6455 5.5.1); returns whether
    /// the message was written.
    pub fn send(
        &self,
        out: &mut Vec<u8>,
        opcode: OpCode,
        payload: &[u8],
        deflater: Option<&mut Deflater>,
        threshold: usize,
        mask: Option<[u8; 4]>,
    ) -> bool {
        if self.state() != CloseState::Open {
            return false;
        }
        match deflater {
            Some(z) if self.compresses(payload.len(), threshold) => {
                let start = out.len();
                let data = z.compress(payload);
                encode_frame(out, opcode, true, data, mask);
                set_rsv1(out, start);
            }
            _ => encode_frame(out, opcode, true, payload, mask),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::negotiate;
    use crate::ws::message::OwnedMessage as Owned;

    const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    /// Read everything; the messages, the replies and the first error.
    fn read_all(
        ep: &mut Endpoint,
        inf: &mut Inflater,
        bytes: &[u8],
        mask: Option<[u8; 4]>,
    ) -> (Vec<Owned>, Vec<u8>, Option<ProtocolError>) {
        let mut data = bytes.to_vec();
        let (mut msgs, mut out) = (Vec::new(), Vec::new());
        let mut pos = 0;
        let limits = Limits {
            max_frame: 1 << 16,
            max_message: 1 << 16,
        };
        for _ in 0..=data.len() {
            match ep.read(&mut data[pos..], &limits, Some(&mut *inf), &mut out, mask) {
                Ok((n, Some(m))) => {
                    pos += n;
                    msgs.push(m.to_owned_message());
                }
                Ok((_, None)) => break,
                Err(e) => return (msgs, out, Some(e)),
            }
        }
        ep.release(&limits);
        (msgs, out, None)
    }

    /// Decode what a server wrote, as its client would.
    fn client_view(bytes: &[u8]) -> Vec<Owned> {
        let mut ep = Endpoint::with_deflate(Role::Client, negotiate("permessage-deflate"));
        read_all(&mut ep, &mut Inflater::new(), bytes, M).0
    }

    #[test]
    fn endpoint_is_a_receiver() {
        assert_eq!(
            std::mem::size_of::<Endpoint>(),
            std::mem::size_of::<Receiver>()
        );
    }

    #[test]
    fn ping_pong_and_close_reply() {
        let mut ep = Endpoint::new(Role::Server);
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Ping, true, b"hi", M);
        encode_frame(&mut bytes, OpCode::Text, true, b"t", M);
        encode_close(&mut bytes, Some(1001), "bye", M);
        encode_frame(&mut bytes, OpCode::Text, true, b"after", M);
        let (msgs, out, err) = read_all(&mut ep, &mut Inflater::new(), &bytes, None);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            [
                Owned::Ping(b"hi".to_vec()),
                Owned::Text("t".into()),
                Owned::Close(Some(1001), "bye".into())
            ]
        );
        assert_eq!(
            client_view(&out),
            [
                Owned::Pong(b"hi".to_vec()),
                Owned::Close(Some(1001), String::new())
            ]
        );
        assert_eq!(ep.state(), CloseState::GotClose);
        assert!(!ep.send(&mut Vec::new(), OpCode::Text, b"x", None, 0, None));
    }

    #[test]
    fn after_our_close_data_is_dropped_and_nothing_answered() {
        let mut ep = Endpoint::new(Role::Client);
        let mut out = Vec::new();
        assert!(ep.close(&mut out, Some(1000), "", M));
        assert!(!ep.close(&mut out, Some(1000), "", M));
        assert_eq!(ep.state(), CloseState::SentClose);
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Text, true, b"late", None);
        encode_frame(&mut bytes, OpCode::Ping, true, b"p", None);
        encode_close(&mut bytes, Some(1000), "", None);
        let mut replies = Vec::new();
        let (msgs, r, err) = read_all(&mut ep, &mut Inflater::new(), &bytes, M);
        replies.extend(r);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            [
                Owned::Ping(b"p".to_vec()),
                Owned::Close(Some(1000), String::new())
            ]
        );
        assert!(replies.is_empty());
        assert_eq!(ep.state(), CloseState::GotClose);
        assert!(!ep.send(&mut out, OpCode::Text, b"x", None, 0, M));
    }

    #[test]
    fn close_keep_reading_still_delivers_data() {
        let mut ep = Endpoint::new(Role::Client);
        let mut out = Vec::new();
        assert!(ep.close_keep_reading(&mut out, Some(1000), "", M));
        assert_eq!(ep.state(), CloseState::SentClose);
        assert!(!ep.close(&mut out, Some(1000), "", M));
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Text, true, b"reply", None);
        encode_frame(&mut bytes, OpCode::Ping, true, b"p", None);
        encode_close(&mut bytes, Some(1000), "", None);
        let (msgs, replies, err) = read_all(&mut ep, &mut Inflater::new(), &bytes, M);
        assert_eq!(err, None);
        assert_eq!(
            msgs,
            [
                Owned::Text("reply".into()),
                Owned::Ping(b"p".to_vec()),
                Owned::Close(Some(1000), String::new())
            ]
        );
        assert!(replies.is_empty(), "no pong and no second close");
        assert_eq!(ep.state(), CloseState::GotClose);
    }

    #[test]
    fn errors_fail_with_their_code() {
        let mut ep = Endpoint::new(Role::Server);
        // RSV1 without negotiation.
        let bytes = [0xC1, 0x80, 0, 0, 0, 0];
        let (_, out, err) = read_all(&mut ep, &mut Inflater::new(), &bytes, None);
        assert_eq!(err, Some(ProtocolError::ReservedBits));
        assert_eq!(ep.state(), CloseState::Failed);
        assert!(matches!(&client_view(&out)[..], [Owned::Close(Some(1002), r)] if !r.is_empty()));
        // Nothing more is read or written.
        let mut more = Vec::new();
        encode_frame(&mut more, OpCode::Ping, true, b"", M);
        let (msgs, out, err) = read_all(&mut ep, &mut Inflater::new(), &more, None);
        assert_eq!((msgs.len(), out.len(), err), (0, 0, None));
        assert!(!ep.close(&mut Vec::new(), Some(1000), "", None));
    }

    #[test]
    fn compressed_round_trip_and_thresholds() {
        let mut z = Deflater::new();
        let server = Endpoint::with_deflate(Role::Server, negotiate("permessage-deflate"));
        let plain = Endpoint::new(Role::Server);
        let narrow = Endpoint::with_deflate(
            Role::Server,
            negotiate("permessage-deflate; server_max_window_bits=10"),
        );
        let long = "x".repeat(NARROW_MAX + 1);
        let mut out = Vec::new();
        for (i, ep) in [&server, &plain, &narrow].into_iter().enumerate() {
            for msg in ["short", "a somewhat longer chat line, long enough", &long] {
                out.clear();
                assert!(ep.send(
                    &mut out,
                    OpCode::Text,
                    msg.as_bytes(),
                    Some(&mut z),
                    16,
                    None
                ));
                let rsv1 = out[0] & 0x40 != 0;
                let expect = ep.deflate() && msg.len() >= 16 && (i == 0 || msg.len() <= 512);
                assert_eq!(rsv1, expect, "{msg:.10} {ep:?}");
                assert_eq!(client_view(&out), [Owned::Text(msg.to_owned())]);
            }
        }
        // Client role: masked and compressed, read back by a server endpoint.
        let client = Endpoint::with_deflate(Role::Client, negotiate("permessage-deflate"));
        out.clear();
        assert!(client.send(&mut out, OpCode::Binary, &[9; 3000], Some(&mut z), 0, M));
        assert!(out.len() < 100);
        let mut server = Endpoint::with_deflate(Role::Server, negotiate("permessage-deflate"));
        let (msgs, _, err) = read_all(&mut server, &mut Inflater::new(), &out, None);
        assert_eq!((msgs, err), (vec![Owned::Binary(vec![9; 3000])], None));
        assert_eq!(server.heap_bytes(), 0);
    }

    #[test]
    fn bomb_answers_1009() {
        let mut z = Deflater::new();
        let client = Endpoint::with_deflate(Role::Client, negotiate("permessage-deflate"));
        let mut bytes = Vec::new();
        client.send(
            &mut bytes,
            OpCode::Text,
            &vec![b'a'; 4 << 20],
            Some(&mut z),
            0,
            M,
        );
        let mut server = Endpoint::with_deflate(Role::Server, negotiate("permessage-deflate"));
        let mut inf = Inflater::new();
        let (msgs, out, err) = read_all(&mut server, &mut inf, &bytes, None);
        assert_eq!((msgs.len(), err.map(|e| e.close_code())), (0, Some(1009)));
        assert!(inf.heap_bytes() <= (1 << 16) + 1);
        assert!(matches!(
            &client_view(&out)[..],
            [Owned::Close(Some(1009), _)]
        ));
    }
}
