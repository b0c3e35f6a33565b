#!/usr/bin/env python3
"""Server cost of signed tokens, measured on a running loopchat from outside.

Opens N WebSocket connections to /ws, each either with its own HS256 token
(`?token=`, signed here with Python's hmac: an implementation independent of
the server's) or as a guest, and reads each WELCOME. Reports, from
/proc/PID of the server:
  - upgrades per server-CPU-second while connecting (utime+stime delta),
  - RSS per connection once all N are up and idle (VmRSS delta / N),
then closes them all. Run it against a server started with and without
--auth-key in the same session and compare the ratios (see BENCHMARKS.md).

usage: benches/auth.py --addr 127.0.0.1:9000 --pid PID -n 10000 [--key FILE] [--rooms N]
"""
import argparse, base64, hashlib, hmac, json, os, resource, socket, sys, time


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(key, sub, ttl=3600):
    now = int(time.time())
    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps({"sub": sub, "exp": now + ttl, "iat": now}, separators=(",", ":")).encode())
    sig = b64(hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def upgrade(addr, target):
    s = socket.create_connection(addr)
    s.sendall(
        f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    deadline = time.time() + 10
    # The 101 head, then the WELCOME frame.
    while b"WELCOME" not in buf:
        if time.time() > deadline:
            raise SystemExit(f"no WELCOME: {buf[:200]!r}")
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit(f"closed: {buf[:200]!r}")
        buf += chunk
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--key", help="key file: connect with tokens")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds idle before RSS is read")
    ap.add_argument("--rooms", type=int, default=1, help="spread the connections over this many rooms")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.addr.rsplit(":", 1)
    addr = (host, int(port))
    key = open(a.key, "rb").read().rstrip() if a.key else None
    # Guests take guest-N nicks, as the load generator's connections do.
    targets = [
        f"/ws?token={token(key, f'user{i}')}&room=r{i % a.rooms}" if key else f"/ws?room=r{i % a.rooms}"
        for i in range(a.n)
    ]
    rss0, cpu0, t0 = rss(a.pid), cpu(a.pid), time.time()
    socks = [upgrade(addr, t) for t in targets]
    cpu1, t1 = cpu(a.pid), time.time()
    time.sleep(a.hold)
    rss1 = rss(a.pid)
    for s in socks:
        s.close()
    out = {
        "mode": "tokens" if key else "guests",
        "connections": a.n,
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "upgrades_per_server_cpu_s": round(a.n / max(cpu1 - cpu0, 1e-9)),
        "wall_s": round(t1 - t0, 2),
        "rss_per_conn_B": round((rss1 - rss0) / a.n),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
