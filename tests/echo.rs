//! `/echo` and the close codes of protocol errors, through real sockets.

mod common;
use common::*;
use std::io::Write;
use tungstenite::Message;

#[test]
fn echo_keeps_type_and_bytes() {
    let s = TestServer::start(config());
    let mut c = Client::connect(&s, "/echo");
    c.send("héllo");
    assert_eq!(c.next(), Message::text("héllo"));
    c.ws.send(Message::binary(vec![0, 1, 2, 255])).unwrap();
    assert_eq!(c.next(), Message::binary(vec![0, 1, 2, 255]));
    c.ws.send(Message::text("")).unwrap();
    assert_eq!(c.next(), Message::text(""));
    // Ping frames are answered with the same payload.
    let mut r = raw(s.addr);
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(client_frame(9, true, b"are you there"));
    bytes.extend(client_frame(8, true, &1000u16.to_be_bytes()));
    r.write_all(&bytes).unwrap();
    let (_, rest) = read_head(&mut r);
    let frames = read_frames_until_close(&mut r, rest);
    assert_eq!(frames[0], (10, b"are you there".to_vec()));
}

#[test]
fn one_mib_sent_one_byte_at_a_time() {
    let s = TestServer::start(config());
    let mut r = raw(s.addr);
    r.set_nodelay(true).unwrap();
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(client_frame(2, true, &payload));
    bytes.extend(client_frame(8, true, &1000u16.to_be_bytes()));
    let writer = {
        let mut w = r.try_clone().unwrap();
        std::thread::spawn(move || {
            // One byte per write: the decoder sees every possible split.
            for b in &bytes {
                w.write_all(std::slice::from_ref(b)).unwrap();
            }
        })
    };
    let (head, rest) = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 101"));
    let frames = read_frames_until_close(&mut r, rest);
    writer.join().unwrap();
    assert_eq!(frames[0].0, 2);
    assert!(frames[0].1 == payload, "echoed payload differs");
    assert_eq!(close_code(&frames), 1000);
}

#[test]
fn sixteen_mib_message_and_many_small_fragments() {
    let s = TestServer::start(config());
    let mut c = Client::connect(&s, "/echo");
    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    c.ws.send(Message::binary(big.clone())).unwrap();
    match c.next() {
        Message::Binary(b) => assert!(b[..] == big[..], "16 MiB echo differs"),
        m => panic!("{m:?}"),
    }
    // 4 MiB in 64-byte fragments (Autobahn 9.x style) is one message.
    let mut r = raw(s.addr);
    r.write_all(upgrade_request("/echo").as_bytes()).unwrap();
    let (_, rest) = read_head(&mut r);
    let total = 4 * 1024 * 1024;
    let chunk = vec![b'x'; 64];
    let writer = {
        let mut w = r.try_clone().unwrap();
        std::thread::spawn(move || {
            let n = total / 64;
            let mut buf = Vec::with_capacity(1 << 20);
            for i in 0..n {
                let op = if i == 0 { 1 } else { 0 };
                buf.extend(client_frame(op, i == n - 1, &chunk));
                if buf.len() > 1 << 19 {
                    w.write_all(&buf).unwrap();
                    buf.clear();
                }
            }
            buf.extend(client_frame(8, true, &1000u16.to_be_bytes()));
            w.write_all(&buf).unwrap();
        })
    };
    let frames = read_frames_until_close(&mut r, rest);
    writer.join().unwrap();
    assert_eq!(frames[0].0, 1);
    assert_eq!(frames[0].1.len(), total);
}

/// Send `frames` after an upgrade to `path`, return the server's close code.
fn close_code_for(path: &str, frames: &[Vec<u8>]) -> u16 {
    let s = TestServer::start(config());
    let mut r = raw(s.addr);
    let mut bytes = upgrade_request(path).into_bytes();
    for f in frames {
        bytes.extend_from_slice(f);
    }
    r.write_all(&bytes).unwrap();
    let (_, rest) = read_head(&mut r);
    let got = read_frames_until_close(&mut r, rest);
    // Finish the close handshake; the server then closes the TCP connection.
    let _ = r.write_all(&client_frame(8, true, &[]));
    let _ = read_to_close(&mut r);
    close_code(&got)
}

#[test]
fn protocol_errors_end_in_the_right_close_code() {
    // Unmasked client frame.
    assert_eq!(
        close_code_for("/echo", &[vec![0x81, 0x02, b'h', b'i']]),
        1002
    );
    // Invalid UTF-8 in a text message.
    assert_eq!(
        close_code_for("/echo", &[client_frame(1, true, &[0xce, 0xba, 0xff])]),
        1007
    );
    // Invalid close code.
    assert_eq!(
        close_code_for("/echo", &[client_frame(8, true, &999u16.to_be_bytes())]),
        1002
    );
    // One-byte close payload.
    assert_eq!(
        close_code_for("/echo", &[client_frame(8, true, &[3])]),
        1002
    );
    // Reserved bits and opcodes.
    let mut rsv = client_frame(1, true, b"x");
    rsv[0] |= 0x40;
    assert_eq!(close_code_for("/echo", &[rsv]), 1002);
    assert_eq!(close_code_for("/echo", &[client_frame(3, true, b"")]), 1002);
    // Fragmented or oversized control frame.
    assert_eq!(
        close_code_for("/echo", &[client_frame(9, false, b"")]),
        1002
    );
    assert_eq!(
        close_code_for("/echo", &[client_frame(9, true, &[0; 126])]),
        1002
    );
    // Continuation without a start.
    assert_eq!(
        close_code_for("/echo", &[client_frame(0, true, b"x")]),
        1002
    );
    // Oversized message on /ws (64 KiB default).
    assert_eq!(
        close_code_for("/ws", &[client_frame(1, true, &vec![b'a'; 70_000])]),
        1009
    );
}

#[test]
fn a_peer_close_is_echoed() {
    let s = TestServer::start(config());
    let mut c = Client::connect(&s, "/echo");
    c.ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Away,
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(u16::from(c.expect_close()), 1001);
}
