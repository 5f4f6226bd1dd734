// Interop with the official `phoenix` npm client (the code browsers run),
// over the `ws` transport in Node: join, push/reply, heartbeats, the auth
// token subprotocol, the V1 JSON serializer, counts seen by a second client,
// bus events, and a client process killed with SIGKILL (no close frame)
// being counted down.
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const path = require("node:path");
const WebSocket = require("ws");
const { Socket } = require("phoenix");
const support = require("./support/server");

const TIMEOUT = 10000;

/** Starts `headcount serve` on a free port, killed when the test ends. */
async function startServer(t, args = []) {
  const server = await support.startServer({ args, timeoutMs: TIMEOUT });
  t.after(() => server.proc.kill("SIGKILL"));
  return server;
}

/** A connected phoenix Socket, disconnected when the test ends. */
function connect(t, server, opts = {}) {
  const socket = new Socket(server.url, { transport: WebSocket, reconnectAfterMs: () => 60000, ...opts });
  const errors = [];
  socket.onError((e) => errors.push(e));
  t.after(() => socket.disconnect());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no open; errors: ${errors}`)), TIMEOUT);
    socket.onOpen(() => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.connect();
  });
}

/** Resolves with the reply's response on "ok", rejects on "error" or "timeout". */
function reply(push) {
  return new Promise((resolve, reject) => {
    push
      .receive("ok", resolve)
      .receive("error", (e) => reject(new Error(`error reply: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("reply timed out")));
  });
}

function errorReply(push) {
  return new Promise((resolve, reject) => {
    push
      .receive("ok", (r) => reject(new Error(`unexpected ok: ${JSON.stringify(r)}`)))
      .receive("error", resolve)
      .receive("timeout", () => reject(new Error("reply timed out")));
  });
}

async function join(socket, topic, params = {}) {
  const channel = socket.channel(topic, params);
  const response = await reply(channel.join(TIMEOUT));
  return { channel, response };
}

/** The next `event` on `channel`. */
function nextEvent(channel, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event}`)), TIMEOUT);
    const ref = channel.on(event, (payload) => {
      clearTimeout(timer);
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

/** Polls `probe` until it returns a truthy value. */
async function eventually(what, probe) {
  const deadline = Date.now() + TIMEOUT;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const count = (stats, topic) =>
  Object.values(stats.connections_by_topic[topic] || {}).reduce((a, b) => a + b, 0);

test("join, push and reply with the official client (V2 serializer)", async (t) => {
  const server = await startServer(t);
  const socket = await connect(t, server);
  const channel = socket.channel("patterns:stats", {});
  const firstUpdate = nextEvent(channel, "stats_update");
  assert.deepEqual(await reply(channel.join(TIMEOUT)), {});
  const update = await firstUpdate;
  assert.equal(update.connections.node, server.node);
  assert.equal(count(update.connections, "patterns:stats"), 1);

  const pushed = nextEvent(channel, "local_stats");
  const local = await reply(channel.push("get_local_stats", {}));
  assert.equal(local.node, server.node);
  assert.equal(local.connection_count, 1);
  assert.equal(local.socket_count, 1);
  assert.match(local.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual(await pushed, local);

  const cluster = await reply(channel.push("get_cluster_stats", {}));
  assert.equal(cluster.cluster_size, 1);
  assert.equal(cluster.source, "local");
  assert.equal(cluster.degraded, false);
  assert.equal(cluster.nodes[server.node].connection_count, 1);

  const monitoring = await reply(channel.push("get_monitoring", {}));
  assert.equal(monitoring.node, server.node);
  assert.equal(monitoring.websocket_connections.connection_count, 1);

  const err = await errorReply(channel.push("no_such_event", {}));
  assert.deepEqual(err, { reason: "unknown event", event: "no_such_event" });
  // Still joined after the unknown event.
  assert.equal((await reply(channel.push("get_connection_stats", {}))).connection_count, 1);

  const refused = await errorReply(socket.channel("nope:x", {}).join(TIMEOUT));
  assert.deepEqual(refused, { reason: "unmatched topic" });
});

test("heartbeats keep the socket alive past the idle timeout", async (t) => {
  const server = await startServer(t, ["--idle-timeout-ms", "600"]);
  let closed = 0;
  const socket = await connect(t, server, { heartbeatIntervalMs: 100 });
  socket.onClose(() => (closed += 1));
  await join(socket, "patterns:stream");
  const rtt = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no heartbeat reply")), TIMEOUT);
    assert.ok(socket.ping((ms) => (clearTimeout(timer), resolve(ms))));
  });
  assert.equal(typeof rtt, "number");
  // Three idle periods: the client's own heartbeats (answered, or the
  // client would drop the connection itself) keep it open.
  await new Promise((r) => setTimeout(r, 1800));
  assert.equal(closed, 0, "socket closed despite heartbeats");
  assert.ok(socket.isConnected());
  const stats = await (await fetch(`http://${server.host}:${server.port}/api/stats`)).json();
  assert.equal(stats.stream_count, 1);
});

test("an auth token (phoenix subprotocol) is accepted", async (t) => {
  const server = await startServer(t);
  const socket = await connect(t, server, { authToken: "s3cret-token" });
  const { channel } = await join(socket, "patterns:vsm", { subsystem: "S3" });
  const local = await reply(channel.push("get_connection_stats", {}));
  assert.equal(count(local, "patterns:vsm"), 1);
});

test("the V1 JSON serializer works with vsn 1.0.0", async (t) => {
  const server = await startServer(t);
  const socket = await connect(t, server, {
    vsn: "1.0.0",
    encode: (msg, cb) => cb(JSON.stringify(msg)),
    decode: (raw, cb) => cb(JSON.parse(raw)),
  });
  const { channel } = await join(socket, "patterns:stats");
  const local = await reply(channel.push("get_local_stats", {}));
  assert.equal(local.connection_count, 1);
  const heartbeat = await new Promise((resolve) => socket.ping(resolve));
  assert.equal(typeof heartbeat, "number");
});

test("counts are seen by a second client", async (t) => {
  const server = await startServer(t);
  const watcherSocket = await connect(t, server);
  const { channel: watcher } = await join(watcherSocket, "patterns:stats", { changes: true });
  const local = () => reply(watcher.push("get_local_stats", {}));

  const a = await connect(t, server);
  const { channel: stream } = await join(a, "patterns:stream");
  // Counted before the join reply: visible at once.
  let s = await local();
  assert.equal(s.stream_count, 1);
  assert.equal(count(s, "patterns:stream"), 1);
  assert.equal(s.socket_count, 2);
  assert.equal(s.connection_count, 2);

  const changed = await eventually("stats_changed with the stream member", async () => {
    const c = await nextEvent(watcher, "stats_changed");
    return c.stream_count === 1 ? c : null;
  });
  assert.equal(changed.node, server.node);

  // The JS client resolves a leave locally at once (it does not wait for
  // the server's reply), so poll.
  await reply(stream.leave(TIMEOUT));
  s = await eventually("the leave counted down", async () => {
    const now = await local();
    return now.stream_count === 0 ? now : null;
  });
  assert.equal(s.connections_by_topic["patterns:stream"], undefined, "zero-count topics vanish");

  a.disconnect();
  await eventually("the disconnected socket counted down", async () => (await local()).socket_count === 1);
});

test("bus events reach the official client", async (t) => {
  const server = await startServer(t, ["--allow-topic", "rooms:*"]);
  const socket = await connect(t, server);
  const { channel: stream } = await join(socket, "patterns:stream");
  const { channel: room } = await join(socket, "rooms:lobby");
  const detected = nextEvent(stream, "pattern_detected");
  const res = await fetch(`http://${server.host}:${server.port}/api/events`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ type: "pattern_detected", data: { confidence: 0.7 } }),
  });
  assert.equal(res.status, 202);
  assert.deepEqual(await res.json(), { accepted: 1 });
  const p = await detected;
  assert.equal(p.confidence, 0.7);
  assert.equal(p.pattern_type, "unknown");
  assert.equal(p.source, "s4_intelligence");

  const shout = nextEvent(room, "shout");
  const b = await fetch(`http://${server.host}:${server.port}/api/broadcast`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "rooms:lobby", event: "shout", payload: { hi: [1, 2] } }),
  });
  assert.equal(b.status, 202);
  assert.deepEqual(await shout, { hi: [1, 2] });
});

test("a client process killed with SIGKILL is counted down", async (t) => {
  const server = await startServer(t);
  const watcherSocket = await connect(t, server);
  const { channel: watcher } = await join(watcherSocket, "patterns:stats");
  const local = () => reply(watcher.push("get_local_stats", {}));

  const child = spawn(process.execPath, [path.join(__dirname, "support", "doomed_client.js"), server.url], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.after(() => child.kill("SIGKILL"));
  let childErr = "";
  child.stderr.on("data", (d) => (childErr += d));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child never joined: ${childErr}`)), TIMEOUT);
    child.stdout.on("data", (d) => {
      if (String(d).includes("joined")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`child exited ${code}: ${childErr}`)));
  });
  let s = await local();
  assert.equal(s.stream_count, 1);
  assert.equal(count(s, "patterns:vsm"), 1);
  assert.equal(s.socket_count, 2);
  assert.equal(s.connection_count, 3);

  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve(signal)));
  child.kill("SIGKILL");
  assert.equal(await exited, "SIGKILL");
  s = await eventually("the killed client counted down", async () => {
    const now = await local();
    return now.socket_count === 1 ? now : null;
  });
  assert.equal(s.stream_count, 0);
  assert.equal(s.connection_count, 1);
  assert.deepEqual(Object.keys(s.connections_by_topic), ["patterns:stats"]);
});
