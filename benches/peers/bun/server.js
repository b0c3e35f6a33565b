// A broadcast server as Bun's docs write one: every client subscribes to one
// topic and every text message received is published to it with
// `server.publish` (uWebSockets' pub/sub underneath; the sender gets it too).
//
// Usage: bun server.js [PORT] [deflate|echo]   (or env PORT; default 9104), on 127.0.0.1.
// `deflate`: Bun's perMessageDeflate. `echo`: no topic; every message goes back
// to its sender only (the counterpart of loopchat's `/echo`, for comparing the
// cost of the upgrade itself).
const port = Number(process.argv[2] || process.env.PORT || 9104);
const deflate = process.argv[3] === "deflate";
const echo = process.argv[3] === "echo";
const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("WebSocket only\n", { status: 426 });
  },
  websocket: {
    perMessageDeflate: deflate,
    // Large fan-out bursts must not close slow readers before loopchat's would.
    backpressureLimit: 4 * 1024 * 1024,
    closeOnBackpressureLimit: false,
    open(ws) {
      if (!echo) ws.subscribe("all");
    },
    message(ws, msg) {
      if (echo) ws.send(msg);
      else if (typeof msg === "string") server.publish("all", msg);
    },
  },
});
console.log(`listening on 127.0.0.1:${server.port}`);
