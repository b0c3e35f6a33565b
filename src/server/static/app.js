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
  const NICK_RETRY_BASE_MS = 1000;
  const NICK_RETRY_CAP_MS = 60000;
  const MAX_LINES_PER_VIEW = 1000;
  // A WebSocket message over the server's --max-chat-message (64 KiB by
  // default) closes the connection (1009): never send one.
  const FRAME_LIMIT = 64 * 1024;
  // One send of a multi-line message; more lines would meet the server's rate limit.
  const MAX_LINES_PER_SEND = 20;
  // WebSocket attempts that never open, while the server answers HTTP, before
  // the page concludes it is refused (Origin check) and stops retrying.
  const REFUSED_AFTER = 3;
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
    countdown: $("countdown"),
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
    nickRetries: 0, // automatic /nick WANTED retries in a row
    nickTimer: null,
    nickRetryOut: false, // a retry is out: its ERR nick-taken is not shown
    failedOpens: 0, // WebSocket attempts in a row that never opened
    refusedSuspect: 0, // of those, failures while HTTP worked
    lineLimit: Infinity, // learnt from ERR too-long: longest line the server took
    lastSent: null, // {text, lines}: what the last send carried, to restore on ERR too-long
    // v2 (PROTOCOL.md "v2 additions"): what the server's last CAPS enabled.
    caps: { ids: false, resume: false },
    // The SESSION token: in memory only, never in storage. It is a secret
    // that takes over this page's nick and rooms; sessionStorage would write
    // it to disk and copy it into a duplicated tab (two tabs would then take
    // the session from each other). A reload is a fresh page: it sends /quit
    // on the way out (so its old session does not hold the nick) and shows
    // the rooms' history on the way in.
    token: null,
    lastId: new Map(), // room key -> id of the last message seen there
    resuming: false, // a resume was asked for at connect, not yet answered
    historyWant: new Map(), // room key -> where the answer to our /history goes
    block: null, // the HISTORY/RESUMED block being read: {key, left, place, quiet}
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

  // Guest nicks are the server's (users cannot choose them): wearing one means
  // the server picked it, so it is never taken as the user's choice.
  function isGuest(n) { return /^guest-/i.test(n); }

  function pickNick() {
    const fromUrl = params.get("nick");
    if (fromUrl && NAME_RE.test(fromUrl) && !isGuest(fromUrl)) return fromUrl;
    const saved = storage.get("loopchat.nick");
    if (saved && NAME_RE.test(saved) && !isGuest(saved)) return saved;
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

  function clock(d) {
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  // The line's time: the server's (from the time= tag) when there is one,
  // else now. Local HH:MM, the full local date and time on hover.
  function timeNode(ms) {
    const d = ms === undefined ? new Date() : new Date(ms);
    const t = node("time", "ts", clock(d));
    if (ms !== undefined) {
      t.dateTime = d.toISOString();
      t.title = d.toLocaleString(undefined, { dateStyle: "full", timeStyle: "medium" });
    }
    return t;
  }

  let viewSeq = 0;
  function viewKeyForRoom(room) { return "#" + lower(room); }
  function viewKeyForPeer(nick) { return "@" + lower(nick); }

  function ensureView(key, title) {
    let v = S.views.get(key);
    if (v) return v;
    const kind = key[0] === "#" ? "room" : key[0] === "@" ? "priv" : "server";
    const pane = node("div", "view");
    pane.dataset.view = key;
    pane.id = "view-" + (++viewSeq);
    pane.setAttribute("role", "log");
    pane.setAttribute("aria-label", title);
    pane.hidden = true;
    const wrap = node("span", "tab-wrap");
    wrap.setAttribute("role", "presentation");
    const tab = node("button", "tab " + kind);
    tab.type = "button";
    tab.dataset.view = key;
    tab.id = "tab-" + viewSeq;
    tab.setAttribute("role", "tab");
    tab.setAttribute("aria-selected", "false");
    tab.setAttribute("aria-controls", pane.id);
    tab.tabIndex = -1;
    const label = node("span", "tab-label", title);
    const badge = node("span", "badge");
    badge.hidden = true;
    tab.append(label, badge);
    tab.addEventListener("click", () => activate(v.key, true));
    tab.addEventListener("keydown", onTabKey);
    wrap.append(tab);
    v = { key, title, kind, node: pane, tab, wrap, label, badge, unread: 0, ids: new Set() };
    if (kind !== "room") {
      // A button of its own (not inside the tab), so Tab reaches it and
      // Enter or Space closes the conversation.
      const close = node("button", "tab-close", "×");
      close.type = "button";
      close.title = "Close this conversation";
      close.setAttribute("aria-label", "Close the conversation with " + title);
      close.addEventListener("click", () => dropView(v.key));
      wrap.append(close);
      v.close = close;
    }
    S.views.set(key, v);
    el.views.append(pane);
    el.tabs.append(wrap);
    return v;
  }

  // Arrow keys move between tabs (the tablist pattern); Enter/Space activate.
  function onTabKey(e) {
    const tabs = [...el.tabs.querySelectorAll('[role="tab"]')];
    const i = tabs.indexOf(e.currentTarget);
    let next = null;
    if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
    else if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
    else if (e.key === "Home") next = tabs[0];
    else if (e.key === "End") next = tabs[tabs.length - 1];
    if (next) { e.preventDefault(); next.focus(); }
  }

  function dropView(key) {
    const v = S.views.get(key);
    if (!v) return;
    const hadFocus = v.wrap.contains(document.activeElement);
    v.node.remove();
    v.wrap.remove();
    S.views.delete(key);
    if (S.active === key) {
      S.active = null;
      const next = S.current ? "#" + S.current : [...S.views.keys()][0];
      if (next) activate(next, false);
      else renderMembers();
    }
    if (hadFocus) el.input.focus();
  }

  function activate(key, fromUser) {
    const v = S.views.get(key);
    if (!v) return;
    for (const o of S.views.values()) {
      const on = o.key === key;
      o.node.hidden = !on;
      o.tab.classList.toggle("active", on);
      o.tab.setAttribute("aria-selected", on ? "true" : "false");
      o.tab.tabIndex = on ? 0 : -1;
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
    if (fromUser) {
      closeMenuOnPhone();
      // A click on a tab leaves the focus where typing goes; keyboard users
      // moving along the tabs keep it on the tab.
      if (!el.tabs.contains(document.activeElement)) el.input.focus();
    }
  }

  // `at` (optional): {ms, id} from the line's tags; `place(line)` puts a
  // history line where it belongs instead of at the end; `quiet` adds no
  // unread count (history is not news).
  function addLine(key, title, kind, parts, at) {
    const v = ensureView(key, title);
    const atBottom = v.node.scrollHeight - v.node.scrollTop - v.node.clientHeight < 40;
    const line = node("div", "line " + kind);
    line.dataset.kind = kind;
    line.append(timeNode(at ? at.ms : undefined));
    for (const p of parts) line.append(p);
    if (at && at.id) {
      line.dataset.id = at.id;
      v.ids.add(at.id);
    }
    if (!(at && at.place && at.place(line))) v.node.append(line);
    while (v.node.childElementCount > MAX_LINES_PER_VIEW) {
      const first = v.node.firstElementChild;
      if (first.dataset.id) v.ids.delete(first.dataset.id);
      first.remove();
    }
    if (S.active === null) activate(key, false);
    if (S.active === key) {
      if (atBottom) v.node.scrollTop = v.node.scrollHeight;
    } else if ((kind === "msg" || kind === "priv") && !(at && at.quiet)) {
      v.unread += 1;
      v.badge.textContent = String(v.unread);
      v.badge.hidden = false;
    }
    return line;
  }

  // Message text with http(s) links made clickable. Built from text nodes and
  // anchors whose href is set only after URL parsing says http: or https:, so
  // nothing in a message becomes markup or a javascript: link.
  const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  function richText(text) {
    const span = node("span", "text");
    let last = 0;
    for (const m of text.matchAll(URL_RE)) {
      // Trailing punctuation usually ends the sentence, not the address.
      const url = m[0].replace(/[.,;:!?)\]}]+$/, "");
      let href = null;
      try {
        const u = new URL(url);
        if (u.protocol === "http:" || u.protocol === "https:") href = u.href;
      } catch (_) { /* not a URL after all: stays text */ }
      if (!href) continue;
      span.append(document.createTextNode(text.slice(last, m.index)));
      const a = node("a", "link", url);
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      span.append(a);
      last = m.index + url.length;
    }
    span.append(document.createTextNode(text.slice(last)));
    return span;
  }

  function nickSpan(nick) {
    const s = node("span", "nick", nick);
    s.style.color = nickColour(nick);
    if (S.me && lower(nick) === lower(S.me)) s.classList.add("self");
    return s;
  }

  // A notice in the active view; before any view is open (an ERR right after
  // WELCOME), in the view of the room being joined, so no stray tab appears.
  function notice(kind, text) {
    let key = S.active;
    let title = key ? S.views.get(key).title : null;
    if (!key && S.current) { key = "#" + S.current; title = roomName(S.current); }
    if (!key) { key = "*server"; title = "server"; }
    return addLine(key, title, kind, [node("span", "text", text)]);
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
            b.addEventListener("keydown", (e) => {
              // Enter and Space, as on a real button.
              if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
            });
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

  // An IRCv3-style tag block in front of a line: {id, ms} and the line
  // without it. Unknown keys are ignored, as the protocol asks.
  function untag(line) {
    const tags = {};
    if (line[0] !== "@") return [tags, line];
    const sp = line.indexOf(" ");
    if (sp < 0) return [tags, line];
    for (const kv of line.slice(1, sp).split(";")) {
      const eq = kv.indexOf("=");
      const k = eq < 0 ? kv : kv.slice(0, eq);
      const v = eq < 0 ? "" : kv.slice(eq + 1);
      if (k === "id" && /^[A-Za-z0-9:._-]{1,64}$/.test(v)) tags.id = v;
      if (k === "time") {
        const ms = Date.parse(v);
        if (!Number.isNaN(ms)) tags.ms = ms;
      }
    }
    return [tags, line.slice(sp + 1)];
  }

  function onLine(raw) {
    const [tags, line] = untag(raw);
    const [cmd] = split(line, 2);
    // Whatever follows WELCOME but CAPS, SESSION or the refusal says the
    // resume was taken.
    if (S.resuming && cmd !== "WELCOME" && cmd !== "CAPS" && cmd !== "SESSION" && cmd !== "ERR") S.resuming = false;
    // The next COUNT MSG lines after HISTORY/RESUMED are that block's.
    let block = null;
    if (S.block && cmd === "MSG") {
      block = S.block;
      block.left -= 1;
      if (block.left <= 0) S.block = null;
    }
    switch (cmd) {
      case "WELCOME": return onWelcome(split(line, 2)[1] || "");
      case "JOINED": { const [, room, nick] = split(line, 3); return onJoined(room, nick); }
      case "LEFT": { const [, room, nick] = split(line, 3); return onLeft(room, nick); }
      case "MSG": { const [, room, nick, text] = split(line, 4); return onMsg(room, nick, text || "", tags, block); }
      case "PRIV": { const [, from, to, text] = split(line, 4); return onPriv(from, to, text || "", tags); }
      case "CAPS": return onCaps((split(line, 2)[1] || "").split(","));
      case "SESSION": S.token = split(line, 2)[1] || null; return null;
      case "HISTORY": { const [, room, count] = split(line, 3); return onHistory(room, count); }
      case "RESUMED": { const [, room, count] = split(line, 3); return onResumed(room, count); }
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
    el.nick.value = nick;
    if (!isGuest(nick)) {
      S.wanted = nick;
      storage.set("loopchat.nick", nick);
    }
    S.nickRetryOut = false;
    // The CAPS line (if any) follows: until then, v1.
    S.caps = { ids: false, resume: false };
    S.block = null;
    S.historyWant.clear();
    checkNick();
    startHeartbeat();
    // A resumed session is back in its rooms; otherwise join them again.
    if (!S.resuming) rejoin();
    requestRooms();
    clearInterval(S.roomsTimer);
    S.roomsTimer = setInterval(requestRooms, ROOMS_EVERY_MS);
    renderRooms();
    renderMembers();
  }

  // The first room came with the URL; join the others, the current one last.
  function rejoin() {
    const cur = S.current;
    const others = S.joined.slice(1).filter((r) => r.key !== cur);
    for (const r of others) send("/join " + r.name);
    if (S.joined.length > 1 && cur) send("/join " + roomName(cur));
  }

  function onCaps(list) {
    S.caps = { ids: list.includes("ids"), resume: list.includes("resume") };
    if (!S.caps.resume) S.token = null;
  }

  // Where a block's lines go: before `before` (our JOINED line: the room's
  // history comes above what was seen live since), or one after the other
  // after `after`; at the end when that line is gone. True when placed.
  function placer(before, after) {
    let cursor = after;
    return (line) => {
      if (before && before.isConnected) { before.before(line); return true; }
      if (cursor && cursor.isConnected) { cursor.after(line); cursor = line; return true; }
      return false;
    };
  }

  function askHistory(room, where) {
    S.historyWant.set(lower(room), where);
    send("/history " + room);
  }

  function onHistory(room, count) {
    const key = lower(room || "");
    const where = S.historyWant.get(key) || {};
    S.historyWant.delete(key);
    const n = Number(count);
    if (!(n > 0)) return;
    S.block = { key, left: n, place: placer(where.before, where.after), quiet: true };
  }

  function onResumed(room, count) {
    S.resuming = false;
    const key = lower(room || "");
    if (!isJoined(key)) S.joined.push({ key, name: room });
    send("/who " + room);
    if (count === "lost") {
      // More was said than the room keeps: show what it still has, after
      // this notice; lines seen before are not shown twice.
      const n = addLine("#" + key, room, "warn", [node("span", "text",
        "reconnected; some messages said while you were away are no longer kept")]);
      askHistory(room, { after: n });
      return;
    }
    const n = Number(count);
    addLine("#" + key, room, "sys", [node("span", "text", "reconnected: " + n +
      (n === 1 ? " message" : " messages") + " while you were away")]);
    if (n > 0) S.block = { key, left: n, place: null, quiet: false };
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
    // The room's recent history goes above our JOINED line.
    if (self && S.caps.ids) askHistory(room, { before: line });
    if (self && (S.pendingActivate === "#" + key || S.active === null)) {
      S.pendingActivate = null;
      activate("#" + key, false);
      // After joining, typing goes to the room (unless the user is busy in
      // another field, e.g. the nick).
      const busy = document.activeElement;
      if (!busy || busy === document.body || el.joinForm.contains(busy) || el.rooms.contains(busy)) el.input.focus();
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
      S.lastId.delete(key);
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

  function onMsg(room, nick, text, tags, block) {
    const key = lower(room);
    if (tags.id) {
      // Blocks and live lines come in the room's order: the last one read is
      // the newest seen, whatever was inserted above.
      S.lastId.set(key, tags.id);
      const v = S.views.get("#" + key);
      if (v && v.ids.has(tags.id)) return; // seen already: never twice
    }
    const line = addLine("#" + key, room, "msg", [nickSpan(nick), richText(text)],
      { id: tags.id, ms: tags.ms, place: block && block.place, quiet: Boolean(block && block.quiet) });
    line.dataset.nick = nick;
    if (S.me && lower(nick) === lower(S.me)) line.classList.add("mine");
  }

  function onPriv(from, to, text, tags) {
    const mine = S.me && lower(from) === lower(S.me);
    const peer = mine ? to : from;
    const key = viewKeyForPeer(peer);
    const line = addLine(key, peer, "priv", [nickSpan(from), node("span", "arrow", "→"), nickSpan(to), richText(text)],
      { id: tags.id, ms: tags.ms });
    line.dataset.nick = from;
    if (mine) line.classList.add("mine");
  }

  function onNick(from, to) {
    const oldKey = lower(from);
    // Ours only when the old nick is the one we wear now: another user's
    // rename (even to a guest) never changes who we are.
    if (S.me && oldKey === lower(S.me)) {
      S.me = to;
      el.nick.value = to;
      if (!isGuest(to)) {
        S.wanted = to;
        storage.set("loopchat.nick", to);
      }
      S.nickRetryOut = false;
      checkNick();
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
    if (code === "bad-session" && S.resuming) {
      // The server no longer has the session (expired, or restarted): it
      // made this a new connection in the URL's room; join the others as
      // before. Each room's history then fills what it still can.
      S.resuming = false;
      S.token = null;
      rejoin();
      return notice("sys", "the session could not be resumed; rejoined");
    }
    if (code === "history-off" && S.historyWant.size) { S.historyWant.clear(); return null; }
    if (code === "not-in-room" || code === "bad-room") S.pendingActivate = null;
    if (code === "forbidden" && /^viewers /.test(text)) setReadOnly("read only: " + text);
    // nick-unavailable: a cluster whose registry could not confirm the nick.
    const refused = code === "nick-taken" || code === "nick-unavailable";
    if (code === "too-long" && S.lastSent) {
      // The message is not lost: it goes back into the input to be shortened.
      const sent = S.lastSent;
      S.lastSent = null;
      const longest = Math.max(...sent.lines.map(byteLength));
      if (sent.lines.length === 1) S.lineLimit = Math.min(S.lineLimit, longest - 1);
      if (!el.input.value) {
        el.input.value = sent.text;
        autosize();
        el.input.focus();
      }
      return notice("warn", "not sent: the message is " + longest +
        " bytes, longer than the server takes in one line (" + text + "). It is back in the input: shorten it, or split it with Shift+Enter.");
    }
    if (refused && S.nickRetryOut) {
      // The answer to an automatic retry: wait longer, say nothing.
      S.nickRetryOut = false;
      checkNick();
      return null;
    }
    if (refused && S.me && isGuest(S.me) && S.wanted) {
      if (!S.nickTimer) checkNick();
      const why = code === "nick-taken" ? " is taken" : " could not be confirmed";
      return notice("err", "the nick " + S.wanted + why + ": you are now " + S.me +
        "; the page will ask for " + S.wanted + " again");
    }
    if (code === "bad-nick" && S.me && isGuest(S.me) && S.wanted && S.nickRetries > 0) {
      // The wanted nick can never be granted: stop asking for it.
      S.wanted = "";
      S.nickRetryOut = false;
      checkNick();
    }
    return notice("err", "error " + code + ": " + text);
  }

  // A server-forced guest nick is temporary: ask for the wanted nick again
  // after about 1 s, doubling to 60 s (with jitter), until it is granted.
  function checkNick() {
    clearTimeout(S.nickTimer);
    S.nickTimer = null;
    const forced = S.me && S.wanted && isGuest(S.me) && lower(S.me) !== lower(S.wanted);
    document.body.dataset.nickWanted = forced ? S.wanted : "";
    if (!forced) {
      S.nickRetries = 0;
      if (S.connected) setStatus("connected", "connected as " + S.me);
      return;
    }
    S.nickRetries += 1;
    const d = Math.min(NICK_RETRY_CAP_MS, NICK_RETRY_BASE_MS * Math.pow(2, S.nickRetries - 1));
    const delay = d / 2 + Math.random() * (d / 2);
    setStatus("connected", "connected as " + S.me + " (waiting for " + S.wanted + ")");
    S.nickTimer = setTimeout(() => {
      S.nickTimer = null;
      if (send("/nick " + S.wanted)) S.nickRetryOut = true;
    }, delay);
  }

  // ---- connection -------------------------------------------------------------
  // The status is a live region: it changes only when the state does (a screen
  // reader reads every change). The ticking countdown is beside it, unannounced.
  function setStatus(state, text) {
    el.status.dataset.state = state;
    if (el.status.textContent !== text) el.status.textContent = text;
    document.body.dataset.conn = state;
    if (state !== "reconnecting") {
      clearInterval(S.countdown);
      el.countdown.textContent = "";
    }
  }

  function wsUrl() {
    const q = new URLSearchParams();
    if (S.wanted) q.set("nick", S.wanted);
    if (TOKEN) q.set("token", TOKEN);
    if (S.joined.length) q.set("room", S.joined[0].name);
    q.set("caps", "ids,resume");
    // With a session, ask to resume it from the last message seen per room;
    // nick and room stay for when the server no longer has it.
    S.resuming = Boolean(S.token && S.caps.resume);
    if (S.resuming) {
      q.set("resume", S.token);
      const since = S.joined.filter((r) => S.lastId.has(r.key)).map((r) => r.name + ":" + S.lastId.get(r.key));
      if (since.length) q.set("since", since.join(","));
    }
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
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      S.failedOpens = 0;
      S.refusedSuspect = 0;
    });
    ws.addEventListener("message", (e) => {
      if (ws !== S.ws) return;
      if (typeof e.data === "string") onLine(e.data);
    });
    ws.addEventListener("close", (e) => {
      if (ws !== S.ws) return;
      lost("connection closed (" + e.code + (e.reason ? " " + e.reason : "") + ")", opened);
    });
    ws.addEventListener("error", () => { /* a close event follows */ });
  }

  function lost(why, opened = true) {
    const wasConnected = S.connected;
    S.connected = false;
    S.ws = null;
    stopHeartbeat();
    clearTimeout(S.nickTimer);
    S.nickTimer = null;
    S.nickRetryOut = false;
    clearInterval(S.roomsTimer);
    if (wasConnected) notice("sys", why + "; reconnecting");
    S.failedOpens = opened ? 0 : S.failedOpens + 1;
    if (S.failedOpens >= REFUSED_AFTER) checkRefused(why);
    else scheduleReconnect(why);
  }

  // The browser does not show a refused upgrade's status (a 403 from the
  // server's Origin check looks like any failed connect), so: when attempts
  // keep failing before opening while the server answers plain HTTP, twice
  // in a row, the WebSocket itself is refused. Retrying will not help.
  async function checkRefused(why) {
    let httpOk = false;
    try {
      const r = await fetch("/healthz", { cache: "no-store" });
      httpOk = r.ok;
    } catch (_) { /* the server is down: keep retrying */ }
    if (S.ws) return; // "Retry now" was pressed meanwhile
    S.refusedSuspect = httpOk ? S.refusedSuspect + 1 : 0;
    if (S.refusedSuspect < 2) { scheduleReconnect(why); return; }
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    el.backoff.hidden = true;
    el.retry.hidden = false;
    setStatus("refused", "refused by the server: not retrying");
    notice("err", "The server answers this page but refuses its WebSocket connection, " +
      S.failedOpens + " attempts in a row. Most likely its Origin check: this page's origin (" +
      location.origin + ") does not match the Host the server sees, e.g. behind a proxy that rewrites Host. " +
      "Start loopchat with --allow-origin " + location.origin + ", or make the proxy pass Host through. " +
      "(A per-address connection limit looks the same.) Press Retry now to try again.");
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
    setStatus("reconnecting", "reconnecting (attempt " + S.attempt + ")");
    const tick = () => {
      const left = Math.max(0, S.retryAt - Date.now());
      el.countdown.textContent = "in " + (left / 1000).toFixed(1) + " s";
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
  const encoder = new TextEncoder();
  function byteLength(s) { return encoder.encode(s).length; }

  // The input grows with its lines, up to a few; Enter sends, Shift+Enter
  // starts a new line.
  function autosize() {
    el.input.rows = Math.min(6, Math.max(1, el.input.value.split("\n").length));
  }
  el.input.addEventListener("input", autosize);
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.sendForm.requestSubmit();
    }
  });

  // One typed line as the protocol line that carries it.
  function protocolLine(text, v) {
    if (text.startsWith("/") && !text.startsWith("//")) {
      const m = /^\/join\s+(\S+)/i.exec(text);
      if (m) S.pendingActivate = "#" + lower(m[1]);
      const p = /^\/msg\s+(\S+)\s/i.exec(text);
      if (p) ensureView(viewKeyForPeer(p[1]), p[1]);
      return text; // a command, sent as typed
    }
    if (v && v.kind === "priv") return "/msg " + v.title + " " + text;
    if (v && v.kind === "room") {
      return "/say " + roomName(v.key.slice(1)) + " " + (text.startsWith("//") ? text.slice(1) : text);
    }
    return text;
  }

  // A message of several lines (Shift+Enter) is sent as one chat line per
  // line, in order (the protocol is line-based); blank lines are dropped.
  // Nothing typed is lost: a message that cannot go stays in the input.
  el.sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.input.value;
    if (!text.trim()) return;
    const v = S.active && S.views.get(S.active);
    const typed = text.split(/\r?\n/).filter((l) => l.trim() !== "");
    if (typed.length === 1) {
      const m = /^\/join\s+(\S+)/i.exec(typed[0]);
      if (m && isJoined(lower(m[1]))) {
        activate("#" + lower(m[1]), true);
        el.input.value = "";
        autosize();
        return;
      }
    }
    if (typed.length > MAX_LINES_PER_SEND) {
      notice("warn", "not sent: " + typed.length + " lines at once; at most " + MAX_LINES_PER_SEND + " go in one message");
      return;
    }
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) {
      notice("err", "not connected: the message was not sent (it is still in the input)");
      return;
    }
    const lines = typed.map((t) => protocolLine(t, v));
    const longest = Math.max(...lines.map(byteLength));
    if (longest > S.lineLimit || longest >= FRAME_LIMIT) {
      const limit = Math.min(S.lineLimit, FRAME_LIMIT - 1);
      notice("warn", "not sent: a line of " + longest + " bytes; the server takes at most " + limit +
        ". Shorten it, or split it with Shift+Enter.");
      return;
    }
    for (const l of lines) send(l);
    S.lastSent = { text, lines };
    el.input.value = "";
    autosize();
  });

  el.nickForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const n = el.nick.value.trim();
    if (!NAME_RE.test(n)) {
      notice("err", "a nick is 1-32 of A-Z a-z 0-9 _ . -");
      return;
    }
    if (isGuest(n)) {
      notice("err", "guest-… nicks are the server's; pick another");
      return;
    }
    S.wanted = n;
    storage.set("loopchat.nick", n);
    S.nickRetries = 0;
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
  el.retry.addEventListener("click", () => {
    if (S.ws) return;
    S.failedOpens = 0;
    S.refusedSuspect = 0;
    connect();
  });

  function closeMenuOnPhone() {
    el.app.classList.remove("menu-open");
    el.menu.setAttribute("aria-expanded", "false");
  }
  el.menu.addEventListener("click", () => {
    const open = el.app.classList.toggle("menu-open");
    el.menu.setAttribute("aria-expanded", open ? "true" : "false");
  });

  // Leaving the page ends its session at once (the others see LEFT, as
  // before): the token dies with the page, and a session left behind would
  // hold the nick for --session-ttl against the page that replaces it.
  addEventListener("pagehide", () => {
    if (S.token) send("/quit");
    S.token = null;
  });

  connect();
  el.input.focus();
})();
