//! Close frame payloads (RFC 6455 sections 5.5.1 and 7.4).

use super::error::ProtocolError;

/// Whether a peer may send `code` in a Close frame: 1000-1003 and 1007-1014
/// are defined for the wire, 3000-4999 are for libraries and applications.
/// 1004-1006 and 1015 are reserved (1005/1006/1015 must never be sent),
/// everything else is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parse a Close payload: empty (no code), or a 2-byte big-endian code and a
/// UTF-8 reason.
///
/// A 1-byte payload is [`ProtocolError::BadClosePayload`] (1002), a code that
/// may not be sent is [`ProtocolError::InvalidCloseCode`] (1002), a reason
/// that is not UTF-8 is [`ProtocolError::InvalidCloseReason`] (1007).
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(ProtocolError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes() {
        // Autobahn 7.7.x (valid) and 7.9.x (invalid).
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(code), "{code}");
            let p = code.to_be_bytes();
            let err = parse_close_payload(&p).unwrap_err();
            assert_eq!(err, ProtocolError::InvalidCloseCode(code));
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(parse_close_payload(b""), Ok((None, "")));
        assert_eq!(parse_close_payload(&[0x03, 0xe8]), Ok((Some(1000), "")));
        assert_eq!(parse_close_payload(b"\x03\xe8bye"), Ok((Some(1000), "bye")));
        let e = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(
            (e.clone(), e.close_code()),
            (ProtocolError::BadClosePayload, 1002)
        );
        let e = parse_close_payload(
            b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        )
        .unwrap_err();
        assert_eq!(
            (e.clone(), e.close_code()),
            (ProtocolError::InvalidCloseReason, 1007)
        );
    }
}
