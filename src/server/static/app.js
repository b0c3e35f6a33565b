"use strict";
const log = document.getElementById("log");
const status = document.getElementById("status");
function show(text) {
  const div = document.createElement("div");
  div.textContent = text; // user text is always text, never markup
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
}
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + location.search;
const ws = new WebSocket(url);
ws.onopen = () => { status.textContent = "connected"; };
ws.onclose = (e) => { status.textContent = "disconnected (" + e.code + ")"; };
ws.onmessage = (e) => show(e.data);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("line");
  if (input.value && ws.readyState === WebSocket.OPEN) ws.send(input.value);
  input.value = "";
};
