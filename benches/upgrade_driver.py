"""N sequential connect + WebSocket upgrade + close against HOST:PORT PATH."""
import socket, sys, struct, os
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, port)).encode()
close = bytes([0x88, 0x82]) + b"\x00\x00\x00\x00" + struct.pack(">H", 1000)
ok = 0
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d: break
        buf += d
    if buf.startswith(b"HTTP/1.1 101"): ok += 1
    s.sendall(close)
    # wait for the server's close frame / EOF so the server side has finished
    while True:
        d = s.recv(4096)
        if not d: break
        if b"\x88" in d: break
    s.close()
print("upgraded", ok, "of", n)
