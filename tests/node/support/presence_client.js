// A presence member the tests kill with SIGKILL (one browser tab that
// vanishes): it connects with the official phoenix client, joins
// argv[3] with the JSON join params argv[4], says "joined" on stdout and
// waits to be killed (no close frame is ever sent).
"use strict";
const WebSocket = require("ws");
const { Socket } = require("phoenix");

const [url, topic, params] = process.argv.slice(2);
const socket = new Socket(url, { transport: WebSocket, reconnectAfterMs: () => 60000 });
socket.connect();
socket
  .channel(topic, JSON.parse(params || "{}"))
  .join()
  .receive("ok", () => process.stdout.write("joined\n"))
  .receive("error", (e) => {
    process.stderr.write(`join ${topic} failed: ${JSON.stringify(e)}\n`);
    process.exit(2);
  });
setInterval(() => {}, 1 << 30);
