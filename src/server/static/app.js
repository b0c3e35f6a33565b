// loopchat web page: plain JS, no dependencies. Every piece of text that came
// from the network or the user is put in the page with textContent, never as
// markup; the page is served under a CSP without inline script or style.
"use strict";

(function () {
  // ---- settings -----------------------------------------------------------
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const PING_EVERY_MS = 20000;
  const PONG_WITHIN_MS = 10000;
  const ROOMS_EVERY_MS = 15000;
  const MAX_LINES_PER_VIEW = 1000;
  const NAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;

  // ---- elements -----------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const el = {
    app: $("app"),
    menu: $("menu"),
    side: $("side"),
    nickForm: $("nick-form"),
    nick: $("nick"),
    status: $("status"),
    backoff: $("backoff"),
    retry: $("reconnect-now"),
    rooms: $("rooms"),
    roomsRefresh: $("rooms-refresh"),
    joinForm: $("join-form"),
    joinRoom: $("join-room"),
    members: $("members"),
    membersRoom: $("members-room"),
    tabs: $("tabs"),
    views: $("views"),
    sendForm: $("send-form"),
    input: $("input"),
  };

  // ---- state --------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const lower = (s) => s.toLowerCase();
  const storage = {
    get(k) { try { return localStorage.getItem(k); } catch (_) { return null; } },
    set(k, v) { try { localStorage.setItem(k, v); } catch (_) { /* private mode */ } },
  };

  const S = {
    wanted: pickNick(), // the nick we ask for on (re)connect
    me: null, // the nick the server gave us
    joined: [], // rooms we are in, [{key, name}] in join order
    current: null, // key of the server's current room
    active: null, // key of the visible view: "#room" or "@nick"
    pendingActivate: null, // view to show when its JOINED arrives
    members: new Map(), // room key -> Map(lower nick -> nick)
    roomList: [], // [{name, count}] from the last ROOMS line
    views: new Map(), // view key -> {key, title, kind, node, tab, unread}
    ws: null,
    connected: false,
    attempt: 0, // failed attempts since the last WELCOME
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    pingSeq: 0,
    pingTimer: null,
    pongTimer: null,
    awaitingPong: null,
    roomsTimer: null,
    roomsSoon: null,
  };

  // A token from the embedding application (`?token=`): the server then names
  // us after it and tells our role; the nick field is fixed.
  const TOKEN = params.get("token");
  if (TOKEN) {
    el.nick.disabled = true;
    el.nick.title = "your nick comes from your sign-in token";
  }

  const initialRoom = params.get("room");
  const firstRoom = initialRoom && ROOM_RE.test(initialRoom) ? initialRoom : "lobby";
  S.joined.push({ key: lower(firstRoom), name: firstRoom });
  S.current = lower(firstRoom);
  S.pendingActivate = "#" + lower(firstRoom);

  function pickNick() {
    const fromUrl = params.get("nick");
    if (fromUrl && NAME_RE.test(fromUrl)) return fromUrl;
    const saved = storage.get("loopchat.nick");
    if (saved && NAME_RE.test(saved)) return saved;
    return "";
  }
  el.nick.value = S.wanted;

  // ---- rendering helpers ---------------------------------------------------
  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function nickColour(nick) {
    let h = 0;
    for (const ch of lower(nick)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return "hsl(" + (h % 360) + ", 55%, 38%)";
  }

  function clock() {
    const d = new Date();
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function viewKeyForRoom(room) { return "#" + lower(room); }
  function viewKeyForPeer(nick) { return "@" + lower(nick); }

  function ensureView(key, title) {
    let v = S.views.get(key);
    if (v) return v;
    const kind = key[0] === "#" ? "room" : key[0] === "@" ? "priv" : "server";
    const pane = node("div", "view");
    pane.dataset.view = key;
    pane.setAttribute("role", "log");
    pane.setAttribute("aria-label", title);
    pane.hidden = true;
    const tab = node("button", "tab " + kind);
    tab.type = "button";
    tab.dataset.view = key;
    const label = node("span", "tab-label", title);
    const badge = node("span", "badge");
    badge.hidden = true;
    tab.append(label, badge);
    tab.addEventListener("click", () => activate(key, true));
    v = { key, title, kind, node: pane, tab, label, badge, unread: 0 };
    if (kind !== "room") {
      const close = node("span", "tab-close", "×");
      close.title = "Close this conversation";
      close.addEventListener("click", (e) => { e.stopPropagation(); dropView(key); });
      tab.append(close);
    }
    S.views.set(key, v);
    el.views.append(pane);
    el.tabs.append(tab);
    return v;
  }

  function dropView(key) {
    const v = S.views.get(key);
    if (!v) return;
    v.node.remove();
    v.tab.remove();
    S.views.delete(key);
    if (S.active === key) {
      S.active = null;
      const next = S.current ? "#" + S.current : [...S.views.keys()][0];
      if (next) activate(next, false);
      else renderMembers();
    }
  }

  function activate(key, fromUser) {
    const v = S.views.get(key);
    if (!v) return;
    for (const o of S.views.values()) {
      const on = o.key === key;
      o.node.hidden = !on;
      o.tab.classList.toggle("active", on);
      o.tab.setAttribute("aria-selected", on ? "true" : "false");
    }
    S.active = key;
    v.unread = 0;
    v.badge.hidden = true;
    v.node.scrollTop = v.node.scrollHeight;
    document.body.dataset.activeView = key;
    if (v.kind === "room") {
      const roomKey = key.slice(1);
      if (fromUser && roomKey !== S.current && isJoined(roomKey)) {
        // Switching: joining a room we are in makes it current and sends nothing.
        send("/join " + roomName(roomKey));
        S.current = roomKey;
        // Keep the join order the server sees: current last.
        const i = S.joined.findIndex((r) => r.key === roomKey);
        S.joined.push(S.joined.splice(i, 1)[0]);
      }
      if (S.connected && isJoined(roomKey)) send("/who " + roomName(roomKey));
      el.input.placeholder = "message #" + v.title + ", or /help";
    } else if (v.kind === "priv") {
      el.input.placeholder = "private message to " + v.title;
    } else {
      el.input.placeholder = "a command, e.g. /join ROOM or /help";
    }
    if (el.input.disabled) el.input.placeholder = el.input.title;
    renderMembers();
    renderRooms();
    if (fromUser) closeMenuOnPhone();
  }

  function addLine(key, title, kind, parts) {
    const v = ensureView(key, title);
    const atBottom = v.node.scrollHeight - v.node.scrollTop - v.node.clientHeight < 40;
    const line = node("div", "line " + kind);
    line.dataset.kind = kind;
    line.append(node("time", "ts", clock()));
    for (const p of parts) line.append(p);
    v.node.append(line);
    while (v.node.childElementCount > MAX_LINES_PER_VIEW) v.node.firstElementChild.remove();
    if (S.active === null) activate(key, false);
    if (S.active === key) {
      if (atBottom) v.node.scrollTop = v.node.scrollHeight;
    } else if (kind === "msg" || kind === "priv") {
      v.unread += 1;
      v.badge.textContent = String(v.unread);
      v.badge.hidden = false;
    }
    return line;
  }

  function nickSpan(nick) {
    const s = node("span", "nick", nick);
    s.style.color = nickColour(nick);
    if (S.me && lower(nick) === lower(S.me)) s.classList.add("self");
    return s;
  }

  // A notice in the active view (or the server view when nothing is open).
  function notice(kind, text) {
    const key = S.active || "*server";
    const title = S.active ? S.views.get(S.active).title : "server";
    addLine(key, title, kind, [node("span", "text", text)]);
  }

  // ---- rooms, members -----------------------------------------------------
  function isJoined(key) { return S.joined.some((r) => r.key === key); }
  function roomName(key) {
    const r = S.joined.find((x) => x.key === key);
    if (r) return r.name;
    const l = S.roomList.find((x) => lower(x.name) === key);
    return l ? l.name : key;
  }

  function renderRooms() {
    const known = new Map();
    for (const r of S.roomList) known.set(lower(r.name), { name: r.name, count: r.count });
    for (const r of S.joined) if (!known.has(r.key)) known.set(r.key, { name: r.name, count: null });
    const items = [...known.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    const frag = document.createDocumentFragment();
    for (const [key, r] of items) {
      if (key.startsWith("+")) continue;
      const li = node("li", "room");
      li.dataset.room = r.name;
      const joined = isJoined(key);
      li.classList.toggle("joined", joined);
      li.classList.toggle("current", S.active === "#" + key);
      const open = node("button", "room-open");
      open.type = "button";
      open.title = joined ? "Show #" + r.name : "Join #" + r.name;
      open.append(node("span", "room-name", "#" + r.name));
      const count = node("span", "count", r.count === null ? "" : String(r.count));
      count.dataset.count = r.count === null ? "" : String(r.count);
      open.append(count);
      open.addEventListener("click", () => {
        if (isJoined(key)) activate("#" + key, true);
        else joinRoom(r.name);
        closeMenuOnPhone();
      });
      li.append(open);
      if (joined) {
        const leave = node("button", "room-leave", "Leave");
        leave.type = "button";
        leave.title = "Leave #" + r.name;
        leave.addEventListener("click", () => send("/leave " + r.name));
        li.append(leave);
      }
      frag.append(li);
    }
    const more = S.roomList.find((r) => r.name.startsWith("+"));
    if (more) frag.append(node("li", "more", more.name + " more"));
    el.rooms.replaceChildren(frag);
  }

  function renderMembers() {
    const v = S.active && S.views.get(S.active);
    const roomKey = v && v.kind === "room" ? v.key.slice(1) : S.current;
    el.membersRoom.textContent = roomKey ? "#" + roomName(roomKey) : "";
    const set = roomKey ? S.members.get(roomKey) : null;
    const frag = document.createDocumentFragment();
    if (set) {
      const nicks = [...set.values()].sort((a, b) => lower(a).localeCompare(lower(b)));
      for (const n of nicks) {
        const li = node("li", "member");
        li.dataset.nick = n;
        if (n.startsWith("+")) {
          li.textContent = n + " more";
        } else {
          const b = nickSpan(n);
          if (!S.me || lower(n) !== lower(S.me)) {
            b.setAttribute("role", "button");
            b.tabIndex = 0;
            b.title = "Private message to " + n;
            const open = () => { openPrivate(n); };
            b.addEventListener("click", open);
            b.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
          }
          li.append(b);
        }
        frag.append(li);
      }
    }
    el.members.replaceChildren(frag);
  }

  function openPrivate(nick) {
    const key = viewKeyForPeer(nick);
    ensureView(key, nick);
    activate(key, true);
    el.input.focus();
  }

  function joinRoom(name) {
    if (!ROOM_RE.test(name)) {
      notice("err", "a room name is 1-64 of A-Z a-z 0-9 _ . -");
      return;
    }
    const key = lower(name);
    if (isJoined(key)) { activate("#" + key, true); return; }
    S.pendingActivate = "#" + key;
    send("/join " + name);
  }

  function requestRooms() { if (S.connected) send("/rooms"); }
  function roomsSoon() {
    // Many JOINED/LEFT lines at once cause one /rooms.
    if (S.roomsSoon) return;
    S.roomsSoon = setTimeout(() => { S.roomsSoon = null; requestRooms(); }, 250);
  }

  function memberSet(key) {
    let m = S.members.get(key);
    if (!m) { m = new Map(); S.members.set(key, m); }
    return m;
  }

  // ---- server lines ---------------------------------------------------------
  function split(line, n) {
    // The first n-1 space-separated tokens, then the rest of the line.
    const out = [];
    let rest = line;
    for (let i = 0; i < n - 1; i++) {
      const sp = rest.indexOf(" ");
      if (sp < 0) { out.push(rest); rest = null; break; }
      out.push(rest.slice(0, sp));
      rest = rest.slice(sp + 1);
    }
    if (rest !== null) out.push(rest);
    return out;
  }

  function onLine(line) {
    const [cmd] = split(line, 2);
    switch (cmd) {
      case "WELCOME": return onWelcome(split(line, 2)[1] || "");
      case "JOINED": { const [, room, nick] = split(line, 3); return onJoined(room, nick); }
      case "LEFT": { const [, room, nick] = split(line, 3); return onLeft(room, nick); }
      case "MSG": { const [, room, nick, text] = split(line, 4); return onMsg(room, nick, text || ""); }
      case "PRIV": { const [, from, to, text] = split(line, 4); return onPriv(from, to, text || ""); }
      case "NICK": { const [, from, to] = split(line, 3); return onNick(from, to); }
      case "ROOMS": return onRooms(line.split(" ").slice(1));
      case "WHO": { const parts = line.split(" "); return onWho(parts[1], parts.slice(2)); }
      case "PONG": return onPong(split(line, 2)[1]);
      case "ERR": { const [, code, text] = split(line, 3); return onErr(code, text || ""); }
      case "SYS": return onSys(split(line, 2)[1] || "");
      default: return notice("sys", line);
    }
  }

  // `SYS signed in as NICK, role ROLE`: show the role; a viewer may not speak.
  function onSys(text) {
    const m = /^signed in as (\S+), role (\S+)$/.exec(text);
    if (m) {
      setStatus("connected", "connected as " + m[1] + " (" + m[2] + ")");
      setReadOnly(m[2] === "viewer" ? "read only: your role is viewer" : null);
    }
    return notice("sys", text);
  }

  function setReadOnly(reason) {
    el.input.disabled = !!reason;
    $("send").disabled = !!reason;
    el.input.title = reason || "";
    if (reason) el.input.placeholder = reason;
  }

  function onWelcome(nick) {
    if (TOKEN) S.wanted = nick;
    S.me = nick;
    S.connected = true;
    S.attempt = 0;
    setStatus("connected", "connected as " + nick);
    el.nick.value = nick;
    if (!S.wanted || lower(S.wanted) === lower(nick)) {
      S.wanted = nick;
      storage.set("loopchat.nick", nick);
    }
    startHeartbeat();
    // The first room came with the URL; join the others, the current one last.
    const cur = S.current;
    const others = S.joined.slice(1).filter((r) => r.key !== cur);
    for (const r of others) send("/join " + r.name);
    if (S.joined.length > 1 && cur) send("/join " + roomName(cur));
    if (S.wanted && lower(S.wanted) !== lower(nick)) send("/nick " + S.wanted);
    requestRooms();
    clearInterval(S.roomsTimer);
    S.roomsTimer = setInterval(requestRooms, ROOMS_EVERY_MS);
    renderRooms();
    renderMembers();
  }

  function onJoined(room, nick) {
    const key = lower(room);
    const self = S.me && lower(nick) === lower(S.me);
    if (self) {
      const known = S.joined.find((r) => r.key === key);
      if (known) {
        // A rejoin after a reconnect: keep the order and the current room.
        known.name = room;
      } else {
        S.joined.push({ key, name: room });
        S.current = key;
      }
      S.members.set(key, new Map());
      send("/who " + room);
    }
    memberSet(key).set(lower(nick), nick);
    const line = addLine("#" + key, room, "join", [nickSpan(nick), node("span", "text", "joined #" + room)]);
    line.dataset.nick = nick;
    if (self && (S.pendingActivate === "#" + key || S.active === null)) {
      S.pendingActivate = null;
      activate("#" + key, false);
    }
    renderMembers();
    renderRooms();
    roomsSoon();
  }

  function onLeft(room, nick) {
    const key = lower(room);
    const self = S.me && lower(nick) === lower(S.me);
    if (S.views.has("#" + key)) {
      const line = addLine("#" + key, room, "leave", [nickSpan(nick), node("span", "text", "left #" + room)]);
      line.dataset.nick = nick;
    }
    const set = S.members.get(key);
    if (set) set.delete(lower(nick));
    if (self) {
      S.joined = S.joined.filter((r) => r.key !== key);
      S.members.delete(key);
      // The server makes the most recently joined remaining room current.
      S.current = S.joined.length ? S.joined[S.joined.length - 1].key : null;
      const wasActive = S.active === "#" + key;
      dropView("#" + key);
      if (wasActive && S.current) activate("#" + S.current, false);
    }
    renderMembers();
    renderRooms();
    roomsSoon();
  }

  function onMsg(room, nick, text) {
    const key = lower(room);
    const line = addLine("#" + key, room, "msg", [nickSpan(nick), node("span", "text", text)]);
    line.dataset.nick = nick;
    if (S.me && lower(nick) === lower(S.me)) line.classList.add("mine");
  }

  function onPriv(from, to, text) {
    const mine = S.me && lower(from) === lower(S.me);
    const peer = mine ? to : from;
    const key = viewKeyForPeer(peer);
    const line = addLine(key, peer, "priv", [nickSpan(from), node("span", "arrow", "→"), nickSpan(to), node("span", "text", text)]);
    line.dataset.nick = from;
    if (mine) line.classList.add("mine");
  }

  function onNick(from, to) {
    const oldKey = lower(from);
    if (S.me && oldKey === lower(S.me)) {
      S.me = to;
      S.wanted = to;
      el.nick.value = to;
      storage.set("loopchat.nick", to);
      setStatus("connected", "connected as " + to);
    }
    let shown = false;
    for (const [room, set] of S.members) {
      if (!set.has(oldKey)) continue;
      set.delete(oldKey);
      set.set(lower(to), to);
      if (S.views.has("#" + room)) {
        addLine("#" + room, roomName(room), "rename", [nickSpan(from), node("span", "text", "is now"), nickSpan(to)]);
        shown = true;
      }
    }
    const pv = S.views.get(viewKeyForPeer(from));
    if (pv) {
      // Follow the peer's new name.
      S.views.delete(pv.key);
      pv.key = viewKeyForPeer(to);
      pv.title = to;
      pv.label.textContent = to;
      pv.node.dataset.view = pv.key;
      pv.tab.dataset.view = pv.key;
      S.views.set(pv.key, pv);
      if (S.active === viewKeyForPeer(from)) S.active = pv.key;
      addLine(pv.key, to, "rename", [nickSpan(from), node("span", "text", "is now"), nickSpan(to)]);
      shown = true;
    }
    if (!shown) notice("rename", from + " is now " + to);
    renderMembers();
  }

  function onRooms(entries) {
    S.roomList = entries.filter(Boolean).map((e) => {
      const eq = e.lastIndexOf("=");
      return eq < 0 ? { name: e, count: null } : { name: e.slice(0, eq), count: Number(e.slice(eq + 1)) };
    });
    renderRooms();
  }

  function onWho(room, nicks) {
    if (!room) return;
    const m = new Map();
    for (const n of nicks) if (n) m.set(lower(n), n);
    S.members.set(lower(room), m);
    renderMembers();
  }

  function onErr(code, text) {
    if (code === "not-in-room" || code === "bad-room") S.pendingActivate = null;
    if (code === "forbidden" && /^viewers /.test(text)) setReadOnly("read only: " + text);
    const line = notice("err", "error " + code + ": " + text);
    return line;
  }

  // ---- connection -------------------------------------------------------------
  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
    document.body.dataset.conn = state;
  }

  function wsUrl() {
    const q = new URLSearchParams();
    if (S.wanted) q.set("nick", S.wanted);
    if (TOKEN) q.set("token", TOKEN);
    if (S.joined.length) q.set("room", S.joined[0].name);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + "/ws?" + q.toString();
  }

  function connect() {
    clearTimeout(S.retryTimer);
    clearInterval(S.countdown);
    S.retryTimer = null;
    el.backoff.hidden = true;
    el.retry.hidden = true;
    setStatus("connecting", S.attempt ? "connecting (attempt " + (S.attempt + 1) + ")…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      scheduleReconnect("cannot connect: " + e.message);
      return;
    }
    S.ws = ws;
    ws.addEventListener("message", (e) => {
      if (ws !== S.ws) return;
      if (typeof e.data === "string") onLine(e.data);
    });
    ws.addEventListener("close", (e) => {
      if (ws !== S.ws) return;
      lost("connection closed (" + e.code + (e.reason ? " " + e.reason : "") + ")");
    });
    ws.addEventListener("error", () => { /* a close event follows */ });
  }

  function lost(why) {
    const wasConnected = S.connected;
    S.connected = false;
    S.ws = null;
    stopHeartbeat();
    clearInterval(S.roomsTimer);
    if (wasConnected) notice("sys", why + "; reconnecting");
    scheduleReconnect(why);
  }

  // Exponential backoff with jitter: the n-th retry waits a random time in
  // [d/2, d] with d = min(cap, base * 2^(n-1)).
  function backoffDelay(attempt) {
    const d = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt - 1));
    return d / 2 + Math.random() * (d / 2);
  }

  function scheduleReconnect(why) {
    S.attempt += 1;
    const delay = backoffDelay(S.attempt);
    S.retryAt = Date.now() + delay;
    el.backoff.textContent = "backoff " + BACKOFF_BASE_MS + " ms doubling to " + BACKOFF_CAP_MS / 1000 + " s, with jitter";
    el.backoff.title = why;
    el.backoff.hidden = false;
    el.retry.hidden = false;
    const tick = () => {
      const left = Math.max(0, S.retryAt - Date.now());
      setStatus("reconnecting", "reconnecting in " + (left / 1000).toFixed(1) + " s (attempt " + S.attempt + ")");
    };
    tick();
    clearInterval(S.countdown);
    S.countdown = setInterval(tick, 100);
    clearTimeout(S.retryTimer);
    S.retryTimer = setTimeout(connect, delay);
  }

  function send(line) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) {
      S.ws.send(line);
      return true;
    }
    return false;
  }

  // Application heartbeat: /ping N every 20 s; no PONG N within 10 s drops the
  // connection (and reconnects).
  function startHeartbeat() {
    stopHeartbeat();
    S.pingTimer = setInterval(() => {
      if (S.awaitingPong !== null) return;
      S.pingSeq += 1;
      S.awaitingPong = String(S.pingSeq);
      send("/ping " + S.awaitingPong);
      S.pongTimer = setTimeout(() => {
        const ws = S.ws;
        lost("no answer to /ping within " + PONG_WITHIN_MS / 1000 + " s");
        if (ws) { try { ws.close(); } catch (_) { /* already closing */ } }
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  function stopHeartbeat() {
    clearInterval(S.pingTimer);
    clearTimeout(S.pongTimer);
    S.pingTimer = null;
    S.pongTimer = null;
    S.awaitingPong = null;
  }

  function onPong(token) {
    if (token !== undefined && token === S.awaitingPong) {
      clearTimeout(S.pongTimer);
      S.pongTimer = null;
      S.awaitingPong = null;
    }
  }

  // ---- user input -------------------------------------------------------------
  el.sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.input.value;
    if (!text.trim()) return;
    const v = S.active && S.views.get(S.active);
    let line;
    if (text.startsWith("/") && !text.startsWith("//")) {
      line = text; // a command, sent as typed
      const m = /^\/join\s+(\S+)/i.exec(text);
      if (m) {
        if (isJoined(lower(m[1]))) { activate("#" + lower(m[1]), true); el.input.value = ""; return; }
        S.pendingActivate = "#" + lower(m[1]);
      }
      const p = /^\/msg\s+(\S+)\s/i.exec(text);
      if (p) ensureView(viewKeyForPeer(p[1]), p[1]);
    } else if (v && v.kind === "priv") {
      line = "/msg " + v.title + " " + text;
    } else if (v && v.kind === "room") {
      line = "/say " + roomName(v.key.slice(1)) + " " + (text.startsWith("//") ? text.slice(1) : text);
    } else {
      line = text;
    }
    if (send(line)) {
      el.input.value = "";
    } else {
      notice("err", "not connected: the message was not sent");
    }
  });

  el.nickForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const n = el.nick.value.trim();
    if (!NAME_RE.test(n)) {
      notice("err", "a nick is 1-32 of A-Z a-z 0-9 _ . -");
      return;
    }
    S.wanted = n;
    storage.set("loopchat.nick", n);
    if (!send("/nick " + n) && !S.ws) connect();
  });

  el.joinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const r = el.joinRoom.value.trim().replace(/^#/, "");
    if (!r) return;
    joinRoom(r);
    el.joinRoom.value = "";
  });

  el.roomsRefresh.addEventListener("click", requestRooms);
  el.retry.addEventListener("click", () => { if (!S.ws) connect(); });

  function closeMenuOnPhone() {
    el.app.classList.remove("menu-open");
    el.menu.setAttribute("aria-expanded", "false");
  }
  el.menu.addEventListener("click", () => {
    const open = el.app.classList.toggle("menu-open");
    el.menu.setAttribute("aria-expanded", open ? "true" : "false");
  });

  connect();
})();
