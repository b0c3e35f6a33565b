// Browser test of the loopchat web page: headless Chromium (Debian's package)
// driven by playwright-core against the real release binary.
//
//   alice (laptop-size page) and bob (phone-size page) chat with each other and
//   with carol, the crate's terminal client fed through a stdin pipe, across the
//   rooms lobby and dev; alice sends bob a private message; a message holding
//   markup stays text and runs nothing; the server is killed and restarted on
//   the same port, and the pages reconnect by themselves, rejoin and send again.
//   Also: focus, own lines, links, Shift+Enter, a message over the line limit,
//   keyboard access (tabs, tab close, Space on members), contrast and input
//   sizes, the live status region, a taken nick at connect (and won back), and
//   a server that refuses the page's Origin (behind a proxy rewriting Host).
//   v2: a page joining a room shows its history above its JOINED line, with
//   the server's times; a page whose connection drops while carol says ten
//   lines comes back by resuming its session and shows each of them exactly
//   once, in order, with no LEFT/JOINED churn on either side.
//
// Screenshots go to tests/browser/out/ (ignored by git).
//
// Every wait is on a condition with a deadline; nothing sleeps.
//
// Environment: LOOPCHAT_BIN (default ../../target/release/loopchat),
// CHROMIUM (default /usr/bin/chromium), TEST_TIMEOUT_MS (default 120000).

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, existsSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { EventEmitter } from "node:events";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const BIN = process.env.LOOPCHAT_BIN || join(root, "target", "release", "loopchat");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 15_000; // longest single wait
const TOTAL = Number(process.env.TEST_TIMEOUT_MS || 120_000);
const XSS = "<img src=x onerror=alert(1)>";

const cleanups = [];
let step = "start";
let checks = 0;

function log(msg) {
  process.stdout.write(msg + "\n");
}
function ok(what) {
  checks += 1;
  log("ok " + checks + " - " + what);
}
function fail(msg) {
  throw new Error(msg);
}

// Resolve with the first value of `get()` that is truthy, or reject after `ms`.
// Used for things outside the browser (child process output); `get` is called
// whenever new output arrives.
function waitOn(emitterish, get, ms, what) {
  return new Promise((res, rej) => {
    const check = () => {
      const v = get();
      if (v) {
        clearTimeout(t);
        emitterish.off("line", check);
        res(v);
      }
    };
    const t = setTimeout(() => {
      emitterish.off("line", check);
      rej(new Error("timed out after " + ms + " ms waiting for " + what));
    }, ms);
    emitterish.on("line", check);
    check();
  });
}

// ---- the server -----------------------------------------------------------------

async function startServer(listen, extra = []) {
  const proc = spawn(BIN, ["--listen", listen, "--log-level", "warn", ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const ev = new EventEmitter();
  const out = [];
  let stderr = "";
  let exited = null;
  proc.stderr.on("data", (d) => { stderr += d; });
  createInterface({ input: proc.stdout }).on("line", (l) => { out.push(l); ev.emit("line"); });
  proc.on("exit", (code, sig) => { exited = code === null ? sig : code; ev.emit("line"); });
  const first = await waitOn(ev, () => {
    if (exited !== null) fail("server exited (" + exited + ") before listening: " + stderr);
    return out.find((l) => l.startsWith("listening on "));
  }, WAIT, "`listening on ADDR` from the server");
  const addr = first.slice("listening on ".length).trim();
  const server = {
    proc,
    addr,
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    stderr: () => stderr,
    kill() {
      if (exited === null) proc.kill("SIGKILL");
      return new Promise((res) => (exited !== null ? res() : proc.once("exit", () => res())));
    },
  };
  cleanups.push(() => server.kill());
  return server;
}

// A redis-server on a free loopback port, or null when it is not installed.
async function startRedis() {
  if (spawnSync("redis-server", ["--version"]).status !== 0) return null;
  const port = await new Promise((res) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => { const p = probe.address().port; probe.close(() => res(p)); });
  });
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  const ev = new EventEmitter();
  let ready = false;
  createInterface({ input: proc.stdout }).on("line", (l) => { if (/Ready to accept connections/.test(l)) ready = true; ev.emit("line"); });
  cleanups.push(() => { proc.kill("SIGKILL"); });
  await waitOn(ev, () => ready, WAIT, "redis-server to be ready");
  return { url: "redis://127.0.0.1:" + port };
}

// ---- the terminal client ----------------------------------------------------------
function startClient(url) {
  const proc = spawn(BIN, ["client", "--max-attempts", "0", url], { stdio: ["pipe", "pipe", "pipe"] });
  const ev = new EventEmitter();
  const lines = [];
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr += d; });
  createInterface({ input: proc.stdout }).on("line", (l) => { lines.push(l); ev.emit("line"); });
  const c = {
    lines,
    stderr: () => stderr,
    send(line) { proc.stdin.write(line + "\n"); },
    // Wait for a line equal to `want` (or matching a predicate) at index >= from.
    waitLine(want, from = 0, what) {
      const pred = typeof want === "function" ? want : (l) => l === want;
      return waitOn(ev, () => lines.slice(from).find(pred), WAIT, what || JSON.stringify(want) + " on the terminal client");
    },
    count(want) { return lines.filter((l) => l === want).length; },
    end() {
      if (proc.exitCode !== null) return Promise.resolve();
      proc.stdin.end();
      const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
      return new Promise((res) => proc.once("exit", () => { clearTimeout(t); res(); }));
    },
  };
  cleanups.push(() => c.end());
  return c;
}

// ---- pages -----------------------------------------------------------------------
async function openPage(name, baseUrl, viewport, { fakeClock = false, nick = name, room = "lobby" } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "loopchat-chromium-" + name + "-"));
  const context = await chromium.launchPersistentContext(dataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  cleanups.push(async () => {
    await context.close().catch(() => {});
    rmSync(dataDir, { recursive: true, force: true });
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  const p = { name, page, context, dialogs: [], problems: [], sent: [], recv: [], urls: [], sockets: 0, ev: new EventEmitter() };
  // The WebSocket frames the page sends and receives, for protocol-level checks.
  page.on("websocket", (ws) => {
    p.sockets += 1;
    p.urls.push(ws.url());
    p.ev.emit("line");
    ws.on("framesent", (f) => { p.sent.push(String(f.payload)); p.ev.emit("line"); });
    ws.on("framereceived", (f) => { p.recv.push(String(f.payload)); p.ev.emit("line"); });
  });
  // The 101's Sec-WebSocket-Extensions (Chromium offers permessage-deflate).
  p.wsExtensions = [];
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
    const h = e.response.headers || {};
    const k = Object.keys(h).find((n) => n.toLowerCase() === "sec-websocket-extensions");
    p.wsExtensions.push(k ? h[k] : "");
  });
  page.on("dialog", (d) => { p.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => p.problems.push("page error: " + e.message));
  page.on("console", (m) => {
    // A CSP violation means the page breaks its own policy.
    if (/Content Security Policy|Refused to/i.test(m.text())) p.problems.push("console: " + m.text());
  });
  // A controllable clock (time still flows): the test jumps over the 20 s
  // heartbeat interval instead of waiting for it.
  if (fakeClock) await page.clock.install();
  await page.goto(baseUrl + "/?nick=" + nick + "&room=" + room);
  return p;
}

const q = (s) => JSON.stringify(s);
const view = (key) => ".view[data-view=" + q(key) + "]";

async function waitConnected(p, nick) {
  await p.page.waitForFunction(
    (n) => {
      const s = document.getElementById("status");
      return s.dataset.state === "connected" && s.textContent === "connected as " + n;
    },
    nick,
    { timeout: WAIT },
  );
}

// Wait until the view `key` holds a line whose text (its parts after the time
// stamp, joined by spaces: "bob hey there") contains `text`; returns that text.
async function waitLineIn(p, key, text) {
  const h = await p.page.waitForFunction(
    ([sel, t]) => {
      for (const l of document.querySelectorAll(sel + " .line")) {
        // The line's parts after the time stamp, joined by spaces.
        const words = [...l.children].filter((c) => !c.classList.contains("ts")).map((c) => c.textContent);
        const text = words.join(" ");
        if (text.includes(t)) return text;
      }
      return false;
    },
    [view(key), text],
    { timeout: WAIT },
  );
  return h.jsonValue();
}

async function say(p, text) {
  await p.page.fill("#input", text);
  await p.page.click("#send");
  await p.page.waitForFunction(() => document.getElementById("input").value === "", null, { timeout: WAIT });
}

async function activeView(p) {
  return p.page.evaluate(() => document.body.dataset.activeView);
}

async function waitActive(p, key) {
  await p.page.waitForFunction((k) => document.body.dataset.activeView === k, key, { timeout: WAIT });
}

async function roomCount(p, room, count) {
  await p.page.waitForFunction(
    ([r, c]) => {
      const li = document.querySelector("#rooms li[data-room=" + JSON.stringify(r) + "]");
      return li && li.querySelector(".count").dataset.count === String(c);
    },
    [room, count],
    { timeout: WAIT },
  );
}

async function members(p, nicks) {
  await p.page.waitForFunction(
    (want) => {
      const have = [...document.querySelectorAll("#members li.member")].map((li) => li.dataset.nick).sort();
      return JSON.stringify(have) === JSON.stringify([...want].sort());
    },
    nicks,
    { timeout: WAIT },
  );
}

// A TCP proxy to `target` that rewrites the Host header of every request to the
// target's address, as a misconfigured reverse proxy does: the page's Origin
// (the proxy's address) then no longer matches the Host the server sees.
function hostRewritingProxy(target) {
  return new Promise((res) => {
    const srv = createServer((down) => {
      const up = tcpConnect(target.port, "127.0.0.1");
      down.on("data", (d) => {
        up.write(Buffer.from(String(d.toString("latin1")).replace(/\r\nHost: [^\r]*\r\n/gi, "\r\nHost: " + target.addr + "\r\n"), "latin1"));
      });
      up.pipe(down);
      const end = () => { down.destroy(); up.destroy(); };
      down.on("error", end); up.on("error", end); down.on("close", end); up.on("close", end);
    });
    srv.listen(0, "127.0.0.1", () => {
      cleanups.push(() => new Promise((r) => srv.close(() => r())));
      res("127.0.0.1:" + srv.address().port);
    });
  });
}

// A TCP proxy to `target` whose connections the test can cut (both sides
// destroyed: no close frame, as when Wi-Fi goes), holding new connections
// back until `reopen()`.
function cuttableProxy(target) {
  return new Promise((res) => {
    const live = new Set();
    const held = [];
    let open = true;
    const srv = createServer((down) => {
      const go = () => {
        if (down.destroyed) return;
        const up = tcpConnect(target.port, "127.0.0.1");
        live.add(down); live.add(up);
        down.pipe(up); up.pipe(down);
        const end = () => { down.destroy(); up.destroy(); live.delete(down); live.delete(up); };
        down.on("error", end); up.on("error", end); down.on("close", end); up.on("close", end);
      };
      down.on("error", () => down.destroy());
      if (open) go(); else held.push(go);
    });
    srv.listen(0, "127.0.0.1", () => {
      cleanups.push(() => new Promise((r) => { for (const s of live) s.destroy(); srv.close(() => r()); }));
      res({
        addr: "127.0.0.1:" + srv.address().port,
        cut() { open = false; for (const s of live) s.destroy(); live.clear(); },
        reopen() { open = true; for (const go of held.splice(0)) go(); },
      });
    });
  });
}

// The lines of a view, in order: {kind, text, id, title} (text: the parts after the time).
async function viewLines(p, key) {
  return p.page.evaluate((sel) => [...document.querySelectorAll(sel + " .line")].map((l) => ({
    kind: l.dataset.kind,
    id: l.dataset.id || null,
    title: l.querySelector(".ts").title,
    text: [...l.children].filter((c) => !c.classList.contains("ts")).map((c) => c.textContent).join(" "),
  })), view(key));
}

// WCAG contrast ratio of two CSS colours (rgb()/hex as computed by the page).
async function contrast(p, fg, bg) {
  return p.page.evaluate(([a, b]) => {
    const rgb = (c) => {
      const probe = document.createElement("span");
      probe.style.color = c;
      document.body.append(probe);
      const m = getComputedStyle(probe).color.match(/\d+(\.\d+)?/g).map(Number);
      probe.remove();
      return m.slice(0, 3);
    };
    const lum = (c) => {
      const [r, g, bl] = rgb(c).map((v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
    };
    const [x, y] = [lum(a), lum(b)];
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  }, [fg, bg]);
}

// ---- the test ------------------------------------------------------------------------
async function main() {
  if (!existsSync(BIN)) fail(BIN + " is missing: run `cargo build --release` first");
  if (!existsSync(CHROMIUM)) fail(CHROMIUM + " is missing: `apt-get install -y chromium`");

  step = "server";
  const s1 = await startServer("127.0.0.1:0");
  const base = "http://" + s1.addr;
  ok("server listening on " + s1.addr);

  step = "terminal client";
  const carol = startClient("ws://" + s1.addr + "/ws?nick=carol&room=dev");
  await carol.waitLine("WELCOME carol");
  await carol.waitLine("JOINED dev carol");
  ok("carol (terminal client) is in dev");

  step = "pages";
  const alice = await openPage("alice", base, { width: 1280, height: 800 }, { fakeClock: true });
  const bob = await openPage("bob", base, { width: 390, height: 844 });
  await waitConnected(alice, "alice");
  await waitConnected(bob, "bob");
  await waitLineIn(alice, "#lobby", "alice joined #lobby");
  await waitActive(alice, "#lobby");
  await waitActive(bob, "#lobby");
  ok("alice and bob connected, in lobby");
  for (const p of [alice, bob]) {
    const ext = p.wsExtensions[0] || "";
    if (!/^permessage-deflate; server_no_context_takeover; client_no_context_takeover/.test(ext)) {
      throw new Error(p.name + ": no permessage-deflate in the 101 (" + JSON.stringify(p.wsExtensions) + ")");
    }
  }
  ok("Chromium negotiated " + alice.wsExtensions[0]);

  step = "focus and accessibility";
  await alice.page.waitForFunction(() => document.activeElement && document.activeElement.id === "input");
  ok("the message input has the focus on load");
  const a11y = await alice.page.evaluate(() => {
    const px = (id) => parseFloat(getComputedStyle(document.getElementById(id)).fontSize);
    const tabs = document.getElementById("tabs");
    const tab = tabs.querySelector(".tab");
    return {
      sizes: [px("input"), px("nick"), px("join-room")],
      tablist: tabs.getAttribute("role"),
      tab: tab && tab.getAttribute("role"),
      selected: tab && tab.getAttribute("aria-selected"),
      controls: tab && document.getElementById(tab.getAttribute("aria-controls")) !== null,
      muted: getComputedStyle(document.documentElement).getPropertyValue("--muted").trim(),
      bg: getComputedStyle(document.documentElement).getPropertyValue("--bg").trim(),
      soft: getComputedStyle(document.documentElement).getPropertyValue("--accent-soft").trim(),
    };
  });
  if (a11y.sizes.some((s) => s < 16)) fail("text fields under 16 px (iOS zooms): " + a11y.sizes);
  if (a11y.tablist !== "tablist" || a11y.tab !== "tab" || a11y.selected !== "true" || !a11y.controls) {
    fail("tabs lack the tab roles: " + JSON.stringify(a11y));
  }
  for (const bg of ["#ffffff", a11y.bg, a11y.soft]) {
    const c = await contrast(alice, a11y.muted, bg);
    if (c < 4.5) fail("muted text " + a11y.muted + " on " + bg + " has contrast " + c.toFixed(2) + " < 4.5");
  }
  ok("inputs are " + a11y.sizes.join("/") + " px, tabs are role=tab in a tablist, muted text contrast >= 4.5:1");

  step = "joining dev";
  // alice joins with the form.
  await alice.page.fill("#join-room", "dev");
  await alice.page.click("#join-btn");
  await waitActive(alice, "#dev");
  await waitLineIn(alice, "#dev", "alice joined #dev");
  await carol.waitLine("JOINED dev alice");
  await alice.page.waitForFunction(() => document.activeElement && document.activeElement.id === "input");
  // bob (phone width) opens the menu, refreshes the room list and picks dev.
  await bob.page.click("#menu");
  await bob.page.click("#rooms-refresh");
  await bob.page.click('#rooms li[data-room="dev"] .room-open');
  await waitActive(bob, "#dev");
  await carol.waitLine("JOINED dev bob");
  await waitLineIn(alice, "#dev", "bob joined #dev");
  ok("alice joined dev with the form (the input has the focus after joining), bob from the room list");

  await roomCount(alice, "dev", 3);
  await roomCount(alice, "lobby", 2);
  await members(alice, ["alice", "bob", "carol"]);
  ok("room list shows dev=3 lobby=2; members of dev are alice, bob, carol");

  step = "chat in dev";
  await say(alice, "hello dev, this is alice");
  await carol.waitLine("MSG dev alice hello dev, this is alice");
  await waitLineIn(bob, "#dev", "hello dev, this is alice");
  carol.send("hi both, carol here from the terminal");
  await waitLineIn(alice, "#dev", "hi both, carol here from the terminal");
  await waitLineIn(bob, "#dev", "hi both, carol here from the terminal");
  await say(bob, "hey carol, bob on the phone");
  await carol.waitLine("MSG dev bob hey carol, bob on the phone");
  await waitLineIn(alice, "#dev", "hey carol, bob on the phone");
  ok("messages in dev go between both pages and the terminal client");

  step = "own lines";
  const looks = await alice.page.evaluate((sel) => {
    const lines = [...document.querySelectorAll(sel + " .line.msg")];
    const mine = lines.find((l) => l.classList.contains("mine"));
    const other = lines.find((l) => !l.classList.contains("mine"));
    const st = (l) => { const c = getComputedStyle(l); return { bg: c.backgroundColor, bar: c.boxShadow }; };
    return mine && other ? { mine: st(mine), other: st(other), who: mine.dataset.nick } : null;
  }, view("#dev"));
  if (!looks || looks.who !== "alice") fail("alice's own line is not marked: " + JSON.stringify(looks));
  if (looks.mine.bg === looks.other.bg || looks.mine.bar === "none") {
    fail("own lines differ only by text colour: " + JSON.stringify(looks));
  }
  ok("own lines have their own background and an accent bar");

  step = "links";
  carol.send("docs at https://example.com/a?b=1&c=2, not javascript:alert(1) or data:text/html,hi");
  await waitLineIn(alice, "#dev", "docs at https://example.com/a?b=1&c=2, not javascript:alert(1)");
  const links = await alice.page.evaluate((sel) => {
    const line = [...document.querySelectorAll(sel + " .line")].find((l) => l.textContent.includes("docs at"));
    return [...line.querySelectorAll("a")].map((a) => ({ href: a.getAttribute("href"), text: a.textContent, rel: a.rel, target: a.target }));
  }, view("#dev"));
  if (links.length !== 1) fail("expected exactly one link: " + JSON.stringify(links));
  const [link] = links;
  if (link.href !== "https://example.com/a?b=1&c=2" || link.text !== "https://example.com/a?b=1&c=2" ||
      !link.rel.split(" ").includes("noopener") || link.target !== "_blank") {
    fail("bad link: " + JSON.stringify(link));
  }
  ok("an https address is a link (rel=noopener, new tab, trailing comma left out); javascript: and data: stay text");

  step = "multi-line";
  const mark0 = carol.lines.length;
  await alice.page.focus("#input");
  await alice.page.keyboard.type("first line");
  await alice.page.keyboard.press("Shift+Enter");
  await alice.page.keyboard.type("second line");
  if ((await alice.page.inputValue("#input")) !== "first line\nsecond line") fail("Shift+Enter did not start a new line");
  await alice.page.keyboard.press("Enter");
  await carol.waitLine("MSG dev alice first line", mark0);
  await carol.waitLine("MSG dev alice second line", mark0);
  await alice.page.waitForFunction(() => document.getElementById("input").value === "");
  ok("Shift+Enter starts a new line; Enter sends each line as its own message");

  step = "over the line limit";
  const long = "x".repeat(5000); // the server's --max-line is 4096
  await alice.page.fill("#input", long);
  await alice.page.click("#send");
  await waitLineIn(alice, "#dev", "not sent: the message is 5009 bytes");
  if ((await alice.page.inputValue("#input")) !== long) fail("the long message was not put back into the input");
  // Now the page knows the limit and does not even send it.
  const sentBefore0 = alice.sent.length;
  await alice.page.click("#send");
  await waitLineIn(alice, "#dev", "not sent: a line of 5009 bytes; the server takes at most 5008");
  if (alice.sent.length !== sentBefore0) fail("the page sent a line it knew was too long");
  if ((await alice.page.inputValue("#input")) !== long) fail("the long message left the input");
  if (carol.lines.some((l) => l.includes("xxxxxxxxxx"))) fail("carol saw the long message");
  await alice.page.fill("#input", "");
  ok("a message over the line limit stays in the input with a warning");

  step = "chat in lobby";
  await alice.page.click('#tabs .tab[data-view="#lobby"]');
  await waitActive(alice, "#lobby");
  await members(alice, ["alice", "bob"]);
  await say(alice, "lobby is quieter");
  // bob's lobby view is not on screen: the line still lands there, with an unread badge.
  await waitLineIn(bob, "#lobby", "lobby is quieter");
  await bob.page.waitForFunction(() => {
    const b = document.querySelector('#tabs .tab[data-view="#lobby"] .badge');
    return b && !b.hidden && b.textContent === "1";
  });
  const inBobDev = await bob.page.evaluate((sel) => document.querySelector(sel).textContent, view("#dev"));
  if (inBobDev.includes("lobby is quieter")) fail("a lobby message showed up in bob's dev view");
  ok("per-room views: a lobby message lands in lobby only (unread badge on bob's page)");

  step = "switching rooms";
  // Switching to the lobby tab sent `/join lobby`, which makes lobby the
  // server's current room: a bare /who now answers for lobby.
  if (!alice.sent.includes("/join lobby")) fail("switching to lobby did not send /join lobby: " + q(alice.sent));
  const seen = alice.recv.length;
  await say(alice, "/who");
  await waitOn(alice.ev, () => alice.recv.slice(seen).find((l) => l.startsWith("WHO ")), WAIT, "a WHO answer on alice's page")
    .then((l) => { if (l !== "WHO lobby alice bob" && l !== "WHO lobby bob alice") fail("bare /who answered " + q(l)); });
  ok("switching a tab sends /join ROOM and makes that room current on the server");

  step = "private message";
  // By keyboard: Space on the member opens the conversation, as on a button.
  await alice.page.focus('#members li[data-nick="bob"] .nick');
  await alice.page.keyboard.press(" ");
  await waitActive(alice, "@bob");
  await say(alice, "psst bob, private");
  await waitLineIn(alice, "@bob", "psst bob, private");
  await waitLineIn(bob, "@alice", "psst bob, private");
  await bob.page.click('#tabs .tab[data-view="@alice"]');
  await say(bob, "got it alice");
  await waitLineIn(alice, "@bob", "got it alice");
  if (carol.lines.some((l) => l.includes("psst bob"))) fail("carol saw a private message");
  ok("private message alice -> bob and back (opened with Space on the member)");

  step = "closing a tab by keyboard";
  const closeSel = '#tabs .tab-wrap:has(.tab[data-view="@bob"]) .tab-close';
  const closeTag = await alice.page.evaluate((sel) => {
    const b = document.querySelector(sel);
    return b && b.tagName + " " + b.tabIndex;
  }, closeSel);
  if (closeTag !== "BUTTON 0") fail("the tab close is not a focusable button: " + closeTag);
  await alice.page.focus(closeSel);
  await alice.page.keyboard.press("Enter");
  await alice.page.waitForFunction(() => !document.querySelector('#tabs .tab[data-view="@bob"]'));
  ok("a conversation tab closes with its own focusable button (Enter)");

  step = "markup stays text";
  await bob.page.click('#tabs .tab[data-view="#dev"]');
  await waitActive(bob, "#dev");
  await alice.page.click('#tabs .tab[data-view="#dev"]');
  await waitActive(alice, "#dev");
  await say(bob, XSS);
  await carol.waitLine("MSG dev bob " + XSS);
  const shown = await waitLineIn(alice, "#dev", XSS);
  await waitLineIn(bob, "#dev", XSS);
  // A later message has arrived after it, so anything the markup could have
  // started has had its chance.
  carol.send("that was a test");
  await waitLineIn(alice, "#dev", "that was a test");
  await waitLineIn(bob, "#dev", "that was a test");
  for (const p of [alice, bob]) {
    const imgs = await p.page.evaluate(() => document.querySelectorAll("img").length);
    if (imgs !== 0) fail(p.name + ": " + imgs + " <img> element(s) in the page");
    if (p.dialogs.length) fail(p.name + ": a dialog fired: " + p.dialogs.join(", "));
    const body = await p.page.evaluate(() => document.body.innerText);
    if (!body.includes(XSS)) fail(p.name + ": the page text lacks the literal markup");
  }
  ok("the message " + XSS + " is shown literally (" + JSON.stringify(shown) + "), no <img>, no dialog");

  step = "nick notice";
  const mark = carol.lines.length;
  carol.send("/nick carol_t");
  await carol.waitLine("NICK carol carol_t", mark);
  await waitLineIn(alice, "#dev", "carol is now carol_t");
  carol.send("/nick carol");
  await waitLineIn(alice, "#dev", "carol_t is now carol");
  ok("NICK notices appear in the room view");

  step = "heartbeat";
  // Every 20 s the page sends /ping N and expects PONG N.
  const seenRecv = alice.recv.length;
  await alice.page.clock.fastForward(20_000);
  await waitOn(alice.ev, () => alice.recv.slice(seenRecv).includes("PONG 1"), WAIT, "PONG 1 on alice's page");
  if (!alice.sent.includes("/ping 1")) fail("alice sent no /ping 1: " + q(alice.sent.slice(-5)));
  ok("heartbeat: /ping 1 answered by PONG 1");
  // A server that stops answering (SIGSTOP: the TCP connection stays open):
  // no PONG within 10 s closes the connection and reconnects.
  s1.proc.kill("SIGSTOP");
  const sentBefore = alice.sent.length;
  await alice.page.clock.fastForward(20_000);
  await waitOn(alice.ev, () => alice.sent.slice(sentBefore).includes("/ping 2"), WAIT, "/ping 2 from alice's page");
  await alice.page.clock.fastForward(10_000);
  await waitLineIn(alice, "#dev", "no answer to /ping within 10 s; reconnecting");
  await alice.page.waitForFunction(() => document.getElementById("status").dataset.state !== "connected");
  ok("heartbeat: no PONG within 10 s -> the page drops the connection and reconnects");

  step = "server restart";
  const port = s1.port;
  const welcomes = carol.count("WELCOME carol");
  // Watch bob's live status region and the countdown beside it.
  await bob.page.evaluate(() => {
    window.__status = [];
    window.__ticks = 0;
    const s = document.getElementById("status");
    new MutationObserver(() => window.__status.push(s.textContent)).observe(s, { childList: true, characterData: true, subtree: true });
    new MutationObserver(() => { window.__ticks += 1; }).observe(document.getElementById("countdown"), { childList: true, characterData: true, subtree: true });
  });
  await s1.kill();
  for (const p of [bob]) {
    const t = await p.page.waitForFunction(() => {
      const s = document.getElementById("status");
      const c = document.getElementById("countdown");
      return s.dataset.state === "reconnecting" && /^reconnecting \(attempt \d+\)$/.test(s.textContent) &&
        /^in \d+\.\d s$/.test(c.textContent) && s.textContent + " " + c.textContent;
    });
    ok(p.name + " shows: " + (await t.jsonValue()));
  }
  // The countdown ticks every 100 ms; the live region changes only with the state.
  await bob.page.waitForFunction(() => window.__ticks >= 8);
  const statusTexts = await bob.page.evaluate(() => window.__status);
  const repeats = statusTexts.filter((t, i) => i > 0 && t === statusTexts[i - 1]);
  const odd = statusTexts.filter((t) => !/^(reconnecting \(attempt \d+\)|connecting( \(attempt \d+\))?…|connection.*)$/.test(t));
  if (repeats.length || odd.length) fail("the live status was rewritten: " + JSON.stringify(statusTexts));
  ok("aria-live status: " + statusTexts.length + " change(s) while the countdown ticked 8+ times");
  // While the port is closed, each attempt fails at once and the next waits longer.
  const t2 = await alice.page.waitForFunction(() => {
    const s = document.getElementById("status");
    const m = /\(attempt (\d+)\)$/.exec(s.textContent);
    return m && Number(m[1]) >= 2 && s.textContent;
  });
  ok("alice backs off: " + (await t2.jsonValue()) + "; " + (await alice.page.textContent("#backoff")));
  const s2 = await startServer("127.0.0.1:" + port);
  if (s2.port !== port) fail("restarted on " + s2.addr + ", not port " + port);
  ok("server restarted on the same port " + port);
  await waitConnected(alice, "alice");
  await waitConnected(bob, "bob");
  await carol.waitLine((l) => l === "WELCOME carol" && carol.count("WELCOME carol") > welcomes, 0, "carol's reconnect");
  // Rejoined: lobby from the URL, dev by /join; the room list shows both with all members.
  await roomCount(alice, "dev", 3);
  await roomCount(alice, "lobby", 2);
  ok("both pages reconnected by themselves and rejoined lobby and dev");

  const mark2 = carol.lines.length;
  await say(alice, "back after the restart");
  await carol.waitLine("MSG dev alice back after the restart", mark2);
  await waitLineIn(bob, "#dev", "back after the restart");
  await say(bob, "welcome back");
  await waitLineIn(alice, "#dev", "welcome back");
  carol.send("all three of us again");
  await waitLineIn(alice, "#dev", "all three of us again");
  await waitLineIn(bob, "#dev", "all three of us again");
  ok("after the restart the pages send and receive again");

  step = "taken nick at connect";
  const frank = startClient("ws://" + s2.addr + "/ws?nick=frank&room=lobby");
  await frank.waitLine("JOINED lobby frank");
  const fp = await openPage("frankpage", "http://" + s2.addr, { width: 1024, height: 700 }, { nick: "frank" });
  const guestText = await fp.page.waitForFunction(() => {
    const s = document.getElementById("status");
    const m = /^connected as (guest-\d+) \(waiting for frank\)$/.exec(s.textContent);
    return m && m[1];
  });
  const guest = await guestText.jsonValue();
  await waitLineIn(fp, "#lobby", "the nick frank is taken: you are now " + guest);
  const stray = await fp.page.evaluate(() => [...document.querySelectorAll("#tabs .tab")].map((t) => t.dataset.view));
  if (JSON.stringify(stray) !== JSON.stringify(["#lobby"])) fail("tabs after a taken nick: " + JSON.stringify(stray));
  const stored = await fp.page.evaluate(() => localStorage.getItem("loopchat.nick"));
  if (stored && stored.startsWith("guest-")) fail("the guest nick was stored as the user's choice: " + stored);
  ok("a taken nick at connect: no stray tab, the room view says you are now " + guest + ", nothing stored");
  // The holder moves away: the page wins its nick back by itself.
  frank.send("/nick frank_elsewhere");
  await fp.page.waitForFunction(() => document.getElementById("status").textContent === "connected as frank");
  await waitLineIn(fp, "#lobby", guest + " is now frank");
  if ((await fp.page.evaluate(() => localStorage.getItem("loopchat.nick"))) !== "frank") fail("frank was not stored");
  ok("the page kept asking for frank (/nick frank with backoff) and got it once it was free");

  step = "origin refused";
  // Through a proxy that rewrites Host, the server's Origin check refuses the
  // page's WebSocket (403): the page must stop retrying and say why.
  const proxy = await hostRewritingProxy(s2);
  const eve = await openPage("eve", "http://" + proxy, { width: 1024, height: 700 });
  await eve.page.waitForFunction(() => document.getElementById("status").dataset.state === "refused");
  await waitLineIn(eve, "#lobby", "--allow-origin http://" + proxy);
  const tries = eve.sockets;
  if (tries !== 4) fail("expected 4 WebSocket attempts before giving up, saw " + tries);
  const retryVisible = await eve.page.isVisible("#reconnect-now");
  if (!retryVisible) fail("no Retry now button after the refusal");
  ok("a page whose Origin the server refuses stops after " + tries + " attempts and says why (--allow-origin)");

  step = "history on join";
  // dora reaches the server through a proxy the test can cut.
  const cut = await cuttableProxy(s2);
  const dora = await openPage("dora", "http://" + cut.addr, { width: 1024, height: 700 }, { room: "dev" });
  await waitConnected(dora, "dora");
  await waitLineIn(dora, "#dev", "dora joined #dev");
  await waitLineIn(dora, "#dev", "all three of us again");
  if (!dora.recv.includes("CAPS ids,resume") || !dora.recv.some((l) => /^SESSION [A-Za-z0-9_-]{32}$/.test(l))) {
    fail("dora's page did not get ids and resume: " + q(dora.recv.slice(0, 6)));
  }
  if (!dora.sent.includes("/history dev")) fail("dora's page did not ask for dev's history: " + q(dora.sent));
  {
    const lines = await viewLines(dora, "#dev");
    const texts = lines.map((l) => l.text);
    const hist = ["alice back after the restart", "bob welcome back", "carol all three of us again"];
    const at = hist.map((h) => texts.indexOf(h));
    const joined = texts.indexOf("dora joined #dev");
    if (at.some((i) => i < 0) || at.some((i, k) => k > 0 && i <= at[k - 1]) || at[2] > joined) {
      fail("dev's history is not shown in order above dora's JOINED: " + q(texts));
    }
    for (const h of hist) if (texts.filter((t) => t === h).length !== 1) fail(h + " shown twice: " + q(texts));
    const l = lines[at[0]];
    if (!l.id || !/\d{4}/.test(l.title)) fail("a history line lacks its id or the server time in its title: " + q(l));
  }
  ok("a joining page shows the room's history above its JOINED line, once, with the server's time in a title");

  step = "offline and back";
  carol.send("before dora goes offline");
  await waitLineIn(dora, "#dev", "before dora goes offline");
  const before = await viewLines(dora, "#dev");
  const carolMark = carol.lines.length;
  const socketsBefore = dora.sockets;
  await dora.context.setOffline(true);
  // setOffline stops new connections, but Chromium may leave an open
  // WebSocket alone: whether it dropped it is logged, and the proxy cuts
  // the connection either way (a network drop: no close frame).
  const dropped = await dora.page.waitForFunction(
    () => document.getElementById("status").dataset.state !== "connected", null, { timeout: 2000 },
  ).then(() => true, () => false);
  log("# setOffline(true) " + (dropped ? "dropped" : "did not drop") + " the open WebSocket; the proxy cuts it");
  cut.cut();
  await dora.page.waitForFunction(() => document.getElementById("status").dataset.state !== "connected");
  const N = 10;
  for (let i = 1; i <= N; i++) carol.send("offline line " + i);
  await carol.waitLine("MSG dev carol offline line " + N, carolMark);
  await dora.context.setOffline(false);
  cut.reopen();
  await waitConnected(dora, "dora");
  await waitLineIn(dora, "#dev", "offline line " + N);
  carol.send("after dora is back");
  await waitLineIn(dora, "#dev", "after dora is back");
  {
    const resumedUrl = dora.urls.slice(socketsBefore).find((u) => u.includes("resume="));
    if (!resumedUrl || !/[?&]since=dev(%3A|:)/.test(resumedUrl)) fail("dora's page did not resume with its position: " + q(dora.urls));
    const after = (await viewLines(dora, "#dev")).slice(before.length);
    const msgs = after.filter((l) => l.kind === "msg").map((l) => l.text);
    const want = [];
    for (let i = 1; i <= N; i++) want.push("carol offline line " + i);
    want.push("carol after dora is back");
    if (JSON.stringify(msgs) !== JSON.stringify(want)) fail("after the drop dora's page shows " + q(msgs));
    const churn = after.filter((l) => l.kind === "join" || l.kind === "leave");
    if (churn.length) fail("JOINED/LEFT churn on dora's page: " + q(churn));
    if (!after.some((l) => l.text === "reconnected: " + N + " messages while you were away")) fail("no resume notice: " + q(after));
    const seenByCarol = carol.lines.slice(carolMark);
    if (seenByCarol.some((l) => /^(LEFT|JOINED) dev dora$/.test(l))) fail("carol saw dora leave or join: " + q(seenByCarol));
    const ids = (await viewLines(dora, "#dev")).map((l) => l.id).filter(Boolean);
    if (new Set(ids).size !== ids.length) fail("a message id shown twice on dora's page");
  }
  ok("offline and back: the page resumed (since=dev:ID) and shows all " + N + " lines once, in order, no LEFT/JOINED churn");

  step = "cluster node";
  // A node started with --redis offers ids and resume too: the session is
  // kept in Redis, so after a drop the page resumes (here on the same node)
  // and gets what it missed from the room's history in Redis, once, with no
  // LEFT/JOINED for the others.
  const redis = await startRedis();
  if (!redis) {
    log("# SKIPPED cluster node: redis-server is not installed");
  } else {
    const node1 = await startServer("127.0.0.1:0", ["--redis", redis.url]);
    const walt = startClient("ws://" + node1.addr + "/ws?nick=walt&room=dev");
    await walt.waitLine("JOINED dev walt");
    const cut2 = await cuttableProxy(node1);
    const vic = await openPage("vic", "http://" + cut2.addr, { width: 1024, height: 700 }, { room: "dev" });
    await waitConnected(vic, "vic");
    await waitLineIn(vic, "#dev", "vic joined #dev");
    await waitOn(vic.ev, () => vic.recv.some((l) => l.startsWith("SESSION")), WAIT, "the node's SESSION on vic's page");
    const caps = vic.recv.find((l) => l.startsWith("CAPS"));
    if (!/\bresume\b/.test(caps)) fail("a cluster node did not offer resume: " + caps);
    walt.send("hello from the node");
    await waitLineIn(vic, "#dev", "hello from the node");
    const waltMark = walt.lines.length;
    const vicSockets = vic.sockets;
    cut2.cut();
    await vic.page.waitForFunction(() => document.getElementById("status").dataset.state !== "connected");
    walt.send("said while vic is away");
    await walt.waitLine("MSG dev walt said while vic is away", waltMark);
    cut2.reopen();
    await waitConnected(vic, "vic");
    await waitOn(vic.ev, () => vic.recv.some((l) => l.startsWith("RESUMED dev")), WAIT, "RESUMED on vic's page");
    walt.send("after vic is back");
    await waitLineIn(vic, "#dev", "after vic is back");
    await waitLineIn(vic, "#dev", "said while vic is away");
    if (!vic.urls.slice(vicSockets).some((u) => u.includes("resume="))) fail("the page did not resume on the node: " + q(vic.urls));
    const resumed = vic.recv.find((l) => l.startsWith("RESUMED dev"));
    if (resumed !== "RESUMED dev 1") fail("expected RESUMED dev 1, got " + resumed);
    const waltAfter = walt.lines.slice(waltMark);
    if (waltAfter.some((l) => /^(LEFT|JOINED) dev vic$/.test(l))) fail("walt saw vic leave or join: " + q(waltAfter));
    const texts = (await viewLines(vic, "#dev")).map((l) => l.text);
    if (texts.filter((t) => t === "vic joined #dev").length !== 1) fail("vic rejoined instead of resuming: " + q(texts));
    for (const t of ["hello from the node", "said while vic is away", "after vic is back"]) {
      if (texts.filter((x) => x.includes(t)).length !== 1) fail("'" + t + "' not shown exactly once: " + q(texts));
    }
    ok("on a cluster node (CAPS ids,resume) the page resumes after a drop: the line said meanwhile once, from Redis, no LEFT/JOINED for the others");
    await walt.end();
    await node1.kill();
  }

  step = "screenshots";
  for (const p of [alice, bob, fp, eve, dora]) {
    if (p.problems.length) fail(p.name + ": " + p.problems.join("; "));
  }
  const outDir = join(here, "out");
  mkdirSync(outDir, { recursive: true });
  await alice.page.screenshot({ path: join(outDir, "screenshot.png") });
  await bob.page.screenshot({ path: join(outDir, "screenshot-phone.png") });
  await eve.page.screenshot({ path: join(outDir, "screenshot-refused.png") });
  ok("screenshots saved in tests/browser/out/");
}

async function cleanup() {
  for (const f of cleanups.reverse()) {
    try { await f(); } catch (_) { /* best effort */ }
  }
}

const guard = setTimeout(async () => {
  log("not ok - the whole test took longer than " + TOTAL + " ms (at step: " + step + ")");
  await cleanup();
  process.exit(1);
}, TOTAL);

main().then(
  async () => {
    clearTimeout(guard);
    await cleanup();
    log("browser test passed: " + checks + " checks");
    process.exit(0);
  },
  async (e) => {
    clearTimeout(guard);
    log("not ok - at step \"" + step + "\": " + (e && e.stack ? e.stack : e));
    await cleanup();
    process.exit(1);
  },
);
