# Bytes per stored message (BENCHMARKS.md, "History and sessions").
# Usage: history_store.py LINE_PORT SERVER_PID ROOMS MSGS TEXT
# ROOMS line clients, each alone in its own room, each
# says MSGS messages of TEXT; server RSS before and after (from /proc).
import socket, sys, time
port, pid, rooms, msgs, text = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
socks = []
for i in range(rooms):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"/nick n{i:05d}\n/join r{i:05d}\n/leave lobby\n/ping ready\n".encode())
    socks.append(s)
def drain(s, want):
    buf = b""
    while want not in buf:
        d = s.recv(65536)
        if not d: raise SystemExit("closed")
        buf = buf[-len(want):] + d if len(buf) > 4096 else buf + d
for s in socks: drain(s, b"PONG ready")
before = rss()
for s in socks:
    s.sendall("".join(f"{text}\n" for _ in range(msgs)).encode() + b"/ping done\n")
for s in socks: drain(s, b"PONG done")
after = rss()
print(f"rooms={rooms} msgs/room={msgs} text={len(text)}B rss_before={before} rss_after={after} delta_per_msg={(after-before)/(rooms*msgs):.1f}")
