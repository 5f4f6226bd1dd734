// A client process the interop test kills with SIGKILL: it connects with the
// official phoenix client, joins two topics, says "joined" on stdout, and
// then waits to be killed (no close frame is ever sent).
"use strict";
const WebSocket = require("ws");
const { Socket } = require("phoenix");

const url = process.argv[2];
const socket = new Socket(url, { transport: WebSocket, heartbeatIntervalMs: 1000 });
socket.connect();
let joined = 0;
for (const [topic, params] of [["patterns:stream", {}], ["patterns:vsm", { subsystem: "s2" }]]) {
  socket
    .channel(topic, params)
    .join()
    .receive("ok", () => {
      joined += 1;
      if (joined === 2) process.stdout.write("joined\n");
    })
    .receive("error", (e) => {
      process.stderr.write(`join ${topic} failed: ${JSON.stringify(e)}\n`);
      process.exit(2);
    });
}
setInterval(() => {}, 1 << 30);
