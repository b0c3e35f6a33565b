# Resume storm (BENCHMARKS.md, "History and sessions"): N line clients take a
# session (/caps resume), all drop at once (no /quit), then N new connections
# resume them at once. Prints resumes per second (wall and per server CPU
# second, from /proc/PID/stat) and the latency percentiles of one resume
# (connect + /resume until its RESUMED line).
# Usage: resume_storm.py LINE_PORT SERVER_PID N
import asyncio, os, resource, sys, time

port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
TICK = os.sysconf("SC_CLK_TCK")

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

async def take(i, sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"/caps resume\n")
    await w.drain()
    while True:
        line = await r.readline()
        if not line:
            raise SystemExit("closed while taking a session")
        if line.startswith(b"SESSION "):
            return line.split()[1].decode(), w

async def resume(token, sem, lat):
    async with sem:
        t0 = time.perf_counter()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"/resume {token}\n".encode())
        await w.drain()
        while True:
            line = await r.readline()
            if not line:
                raise SystemExit("closed while resuming")
            if line.startswith(b"ERR bad-session"):
                raise SystemExit(line)
            if line.startswith(b"RESUMED "):
                lat.append(time.perf_counter() - t0)
                return w

async def plain(sem, lat):
    """The baseline: a fresh connection and one round trip, no session."""
    async with sem:
        t0 = time.perf_counter()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"/ping x\n")
        await w.drain()
        while True:
            line = await r.readline()
            if not line:
                raise SystemExit("closed")
            if line.startswith(b"PONG"):
                lat.append(time.perf_counter() - t0)
                return w

def report(what, k, wall, c, lat):
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(f"{what}: {k} in {wall:.2f}s: {k/wall:.0f}/s wall, "
          f"server {c:.2f} CPU s = {k/max(c, 1e-9):.0f} per server CPU s; "
          f"latency p50 {pct(0.5):.1f} ms p99 {pct(0.99):.1f} ms")

async def main():
    sem = asyncio.Semaphore(512)
    lat = []
    c0, t0 = cpu(), time.perf_counter()
    base = await asyncio.gather(*(plain(sem, lat) for _ in range(n)))
    report("baseline connect + /ping", len(base), time.perf_counter() - t0, cpu() - c0, lat)
    for w in base:
        w.transport.abort()
    await asyncio.sleep(1.0)
    sem = asyncio.Semaphore(512)
    held = await asyncio.gather(*(take(i, sem) for i in range(n)))
    for _, w in held:
        w.transport.abort()
    await asyncio.sleep(1.0)  # let the server notice every drop
    lat = []
    c0, t0 = cpu(), time.perf_counter()
    back = await asyncio.gather(*(resume(t, sem, lat) for t, _ in held))
    report("connect + /resume", len(back), time.perf_counter() - t0, cpu() - c0, lat)
    for w in back:
        w.transport.abort()

asyncio.run(main())
