// A broadcast server as the `ws` README writes it: every text message received
// is sent to every open client.
//
// Usage: node server.js [PORT] [deflate]   (or env PORT; default 9103), listening on 127.0.0.1.
//
// `deflate`: permessage-deflate as ws offers it (a zlib stream per connection,
// context takeover unless the client declines it), compressing messages of 64
// bytes and more, as loopchat's default --compression-threshold does.
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 9103);
const deflate = process.argv[3] === 'deflate';
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: deflate ? { threshold: 64 } : false,
});

wss.on('connection', function connection(ws) {
  ws.on('error', () => {});
  ws.on('message', function message(data, isBinary) {
    if (isBinary) return;
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: false });
      }
    });
  });
});

wss.on('listening', () => console.log(`listening on 127.0.0.1:${port}`));
