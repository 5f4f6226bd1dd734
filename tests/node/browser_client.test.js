// The official phoenix.js bundle and the seed's raw V1 snippet, running in a
// real headless Chromium on a page of another origin: joins, push/reply,
// the local_stats push, a bus event, a cross-origin read of /api/stats, and
// every membership counted down when the page goes away.
"use strict";

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");
const { startServer, stopServer } = require("./support/server");

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
];
const PHOENIX_JS = fs.readFileSync(path.join(__dirname, "node_modules", "phoenix", "priv", "static", "phoenix.min.js"));

const PAGE = `<!doctype html><meta charset="utf-8"><title>client</title>
<script src="/phoenix.js"></script>
<script>
  window.seen = {events: [], seed: []};
  window.start = (wsBase, httpBase) => {
    // The official client, V2 serializer, with an auth token (subprotocol).
    const socket = new Phoenix.Socket(wsBase + "/socket", {params: {token: "t"}, authToken: "secret"});
    socket.connect();
    const stats = socket.channel("patterns:stats", {});
    stats.on("local_stats", (p) => seen.events.push(["local_stats", p.connection_count]));
    stats.join().receive("ok", () => {
      stats.push("get_local_stats", {}).receive("ok", (r) => { seen.reply = r; });
    });
    const stream = socket.channel("patterns:stream", {});
    stream.on("pattern_detected", (p) => { seen.detected = p; });
    stream.join().receive("ok", () => { seen.streamJoined = true; });
    // The seed snippet: raw V1 frames with number refs.
    const ws = new WebSocket(wsBase + "/socket/websocket");
    ws.onopen = () => {
      ws.send(JSON.stringify({topic: "patterns:stats", event: "phx_join", payload: {}, ref: 1}));
      ws.send(JSON.stringify({topic: "patterns:stats", event: "get_local_stats", payload: {}, ref: 2}));
    };
    ws.onmessage = (m) => seen.seed.push(JSON.parse(m.data));
    fetch(httpBase + "/api/stats").then((r) => r.json()).then((j) => { seen.fetched = j; }, (e) => { seen.fetchError = String(e); });
  };
</script>`;

let browser, profileDir, pages;

before(async () => {
  pages = http.createServer((req, res) => {
    if (req.url === "/phoenix.js") {
      res.writeHead(200, {"content-type": "text/javascript"});
      res.end(PHOENIX_JS);
    } else {
      res.writeHead(200, {"content-type": "text/html"});
      res.end(PAGE);
    }
  });
  await new Promise((r) => pages.listen(0, "127.0.0.1", r));
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "headcount-chromium-"));
  browser = await chromium.launchPersistentContext(profileDir, {executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS});
});

after(async () => {
  if (browser) await browser.close();
  if (pages) pages.close();
  if (profileDir) fs.rmSync(profileDir, {recursive: true, force: true});
});

async function stats(server) {
  const res = await fetch(`${server.base}/api/stats`);
  assert.equal(res.status, 200);
  return res.json();
}

async function until(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`${what} within ${ms} ms (last: ${JSON.stringify(last)})`);
}

test("phoenix.js and the seed snippet in Chromium are served and counted, and counted down when the page closes", async () => {
  const server = await startServer();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${pages.address().port}/`);
    await page.evaluate(([ws, base]) => window.start(ws, base), [server.base.replace(/^http/, "ws"), server.base]);
    const seen = await until("the browser's joins and replies", () =>
      page.evaluate(() => (seen.reply && seen.streamJoined && seen.seed.some((m) => m.ref === 2) && (seen.fetched || seen.fetchError)) ? seen : null));

    // The phoenix.js socket (stats + stream) and the seed socket (stats).
    const s = await stats(server);
    assert.equal(s.connection_count, 3);
    assert.equal(s.socket_count, 2);
    assert.equal(s.connections_by_topic["patterns:stats"][server.node], 2);
    assert.equal(s.stream_count, 1);
    assert.equal(seen.fetchError, undefined, "a page on another origin can read /api/stats");
    assert.equal(typeof seen.fetched.connection_count, "number");
    assert.ok(seen.reply.connection_count >= 2, JSON.stringify(seen.reply));
    await until("the local_stats push", () => page.evaluate(() => seen.events.length > 0));

    // The seed frames get V1 replies with the refs' own JSON type.
    const join = seen.seed.find((m) => m.ref === 1);
    const local = seen.seed.find((m) => m.ref === 2);
    assert.ok(local, JSON.stringify(seen.seed));
    assert.equal(seen.seed.find((m) => m.event === "stats_update")?.ref, null, "stats_update is a push");
    assert.deepEqual(join, {topic: "patterns:stats", event: "phx_reply", payload: {status: "ok", response: {}}, ref: 1});
    assert.equal(local.event, "phx_reply");
    assert.equal(local.payload.status, "ok");
    assert.equal(local.payload.response.node, server.node);

    // A bus event reaches the browser's stream channel.
    const res = await fetch(`${server.base}/api/events`, {
      method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({type: "pattern_detected", data: {pattern_type: "spike", confidence: 0.9}}),
    });
    assert.equal(res.status, 202);
    const detected = await until("the pattern_detected push", () => page.evaluate(() => seen.detected));
    assert.equal(detected.pattern_type, "spike");
    assert.equal(detected.source, "s4_intelligence");

    await page.close();
    await until("every membership counted down after the page closed", async () => {
      const after = await stats(server);
      return after.connection_count === 0 && after.socket_count === 0 ? after : null;
    });
  } finally {
    await stopServer(server);
  }
});
