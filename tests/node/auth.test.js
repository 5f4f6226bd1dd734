// Signed tokens and origins (SPEC §8.1, §8.2) with the official phoenix.js
// client: `authToken` (the `base64url.bearer.phx.` subprotocol) and
// `params: {token}` over the `ws` transport in Node; a socket without a
// token never opens; after the node closes a socket 4001 at its token's
// `exp`, phoenix.js reconnects with fresh `params` and rejoins; and the same
// `authToken` join from a page in headless Chromium, whose Origin the node
// checks against --allowed-origins.
"use strict";

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const WebSocket = require("ws");
const { Socket } = require("phoenix");
const { chromium } = require("playwright-core");
const support = require("./support/server");

const TIMEOUT = 10000;
const SECRET = "node auth tests: a secret of at least thirty-two bytes";
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
];
const PHOENIX_JS = fs.readFileSync(path.join(__dirname, "node_modules", "phoenix", "priv", "static", "phoenix.min.js"));

const b64url = (data) => Buffer.from(data).toString("base64url");
const nowSecs = () => Math.floor(Date.now() / 1000);

/** An HS256 JWT, as a back-end would sign it. */
function sign(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const mac = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${mac}`;
}

const userToken = (extra = {}) => sign({ sub: "alice", iat: nowSecs(), exp: nowSecs() + 3600, ...extra });

/** `headcount serve --auth-secret SECRET --allow-topic rooms:* ...`, killed when the test ends. */
async function startServer(t, args = []) {
  const server = await support.startServer({
    args: ["--auth-secret", SECRET, "--allow-topic", "rooms:*", ...args],
    timeoutMs: TIMEOUT,
  });
  t.after(() => server.proc.kill("SIGKILL"));
  return server;
}

async function stats(server) {
  const res = await fetch(`${server.base}/api/stats`);
  assert.equal(res.status, 200);
  return res.json();
}

/** Prometheus sample `name{reason="…"}` (0 when absent). */
async function metric(server, name, reason) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const label = reason === undefined ? "" : `{reason="${reason}"}`;
  const line = text.split("\n").find((l) => l.startsWith(`${name}${label} `));
  return line ? Number(line.split(" ").pop()) : 0;
}

const count = (s, topic) => Object.values(s.connections_by_topic[topic] || {}).reduce((a, b) => a + b, 0);

async function eventually(what, probe, ms = TIMEOUT) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A phoenix Socket over `ws`, disconnected when the test ends. */
function socketFor(t, server, opts = {}) {
  const socket = new Socket(server.url, { transport: WebSocket, reconnectAfterMs: () => 60000, ...opts });
  t.after(() => socket.disconnect());
  return socket;
}

/** Joins `topic`; resolves with the ok response, rejects on error or timeout. */
function join(socket, topic, params = {}) {
  const channel = socket.channel(topic, params);
  return new Promise((resolve, reject) => {
    channel.join(TIMEOUT)
      .receive("ok", (r) => resolve({ channel, response: r }))
      .receive("error", (e) => reject(new Error(`join error: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timed out")));
  });
}

test("authToken (the phoenix subprotocol) and params.token both join an allowed topic", async (t) => {
  const server = await startServer(t);
  const viaProtocol = socketFor(t, server, { authToken: userToken({ topics: ["rooms:*"] }) });
  viaProtocol.connect();
  await join(viaProtocol, "rooms:1");
  const viaParams = socketFor(t, server, { params: { token: userToken() } });
  viaParams.connect();
  await join(viaParams, "rooms:1");
  // The token's topics are enforced through phoenix.js too.
  const refused = await new Promise((resolve) => {
    viaProtocol.channel("patterns:stats", {}).join(TIMEOUT).receive("error", resolve).receive("ok", () => resolve("ok"));
  });
  assert.deepEqual(refused, { reason: "unauthorized" });
  const s = await stats(server);
  assert.equal(s.socket_count, 2);
  assert.equal(count(s, "rooms:1"), 2);
  assert.equal(count(s, "patterns:stats"), 0);
  assert.equal(await metric(server, "headcount_auth_failures_total", "missing_token"), 0);
});

test("without a token (auth required) the socket never opens", async (t) => {
  const server = await startServer(t);
  for (const opts of [{}, { authToken: sign({ sub: "alice", exp: nowSecs() + 3600 }, "a different secret, 32 bytes long!!") }]) {
    const socket = socketFor(t, server, opts);
    let opened = false;
    socket.onOpen(() => (opened = true));
    const errored = new Promise((resolve) => socket.onError(resolve));
    socket.connect();
    await errored;
    // Give a wrongly accepted socket time to show itself.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(opened, false, JSON.stringify(Object.keys(opts)));
    assert.equal(socket.isConnected(), false);
    socket.disconnect();
  }
  assert.equal(await metric(server, "headcount_auth_failures_total", "missing_token"), 1);
  assert.equal(await metric(server, "headcount_auth_failures_total", "invalid_token"), 1);
  const s = await stats(server);
  assert.equal(s.socket_count, 0);
  assert.equal(s.connection_count, 0);
});

test("after the 4001 close at exp, phoenix.js reconnects with fresh params and rejoins", async (t) => {
  const server = await startServer(t);
  let calls = 0;
  // The first token expires in 2–3 s; every later one in an hour.
  const params = () => {
    calls += 1;
    return { token: userToken({ exp: nowSecs() + (calls === 1 ? 3 : 3600) }) };
  };
  // phoenix.js's own reconnect schedule (no override).
  const socket = new Socket(server.url, { transport: WebSocket, params });
  t.after(() => socket.disconnect());
  const closes = [];
  socket.onClose((e) => closes.push([e.code, e.reason]));
  socket.connect();
  let joins = 0;
  const channel = socket.channel("rooms:1", {});
  channel.join(TIMEOUT).receive("ok", () => (joins += 1));
  await eventually("the first join", () => joins === 1);
  assert.equal(count(await stats(server), "rooms:1"), 1);

  await eventually("the 4001 close", () => closes.length > 0, 8000);
  assert.deepEqual(closes[0], [4001, "token expired"]);
  await eventually("the rejoin after the reconnect", () => joins === 2);
  assert.ok(calls >= 2, `params() called ${calls} times`);
  const s = await eventually("one socket, one membership", async () => {
    const s = await stats(server);
    return s.socket_count === 1 && count(s, "rooms:1") === 1 ? s : null;
  });
  assert.equal(s.connection_count, 1);
  assert.equal(await metric(server, "headcount_token_expiry_closes_total"), 1);
  assert.equal(closes.length, 1, JSON.stringify(closes));
  // Still answered on the new socket.
  const r = await new Promise((resolve, reject) => {
    channel.push("get_connection_stats", {}).receive("ok", resolve).receive("error", reject).receive("timeout", reject);
  });
  assert.equal(count(r, "rooms:1"), 1);
});

test("a token past its exp but within the leeway does not make phoenix.js reconnect in a loop", async (t) => {
  const server = await startServer(t);
  // Accepted at the upgrade (5 s leeway); the app has no newer token.
  const token = userToken({ exp: nowSecs() - 4 });
  const socket = new Socket(server.url, { transport: WebSocket, authToken: token });
  t.after(() => socket.disconnect());
  let opens = 0;
  const closes = [];
  socket.onOpen(() => (opens += 1));
  socket.onClose((e) => closes.push(e.code));
  socket.connect();
  let joins = 0;
  socket.channel("rooms:1", {}).join(TIMEOUT).receive("ok", () => (joins += 1));
  await eventually("the 4001 close", () => closes.includes(4001), 8000);
  // Coming back with the same token is refused at the upgrade, so the
  // client backs off instead of reconnecting every 10 ms.
  await eventually("the refused reconnect", async () => (await metric(server, "headcount_auth_failures_total", "expired_token")) >= 1);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(opens, 1, `${opens} sockets opened with one expired token`);
  assert.equal(joins, 1);
  assert.equal(await metric(server, "headcount_token_expiry_closes_total"), 1);
  const s = await stats(server);
  assert.equal(s.socket_count, 0);
  assert.equal(s.connection_count, 0);
});

// ---------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------

const PAGE = `<!doctype html><meta charset="utf-8"><title>auth</title>
<script src="/phoenix.js"></script>
<script>
  // Connects with phoenix.js's authToken and joins; resolves with what happened.
  window.run = (wsBase, token, topic) => new Promise((resolve) => {
    const opts = {reconnectAfterMs: () => 60000};
    if (token) opts.authToken = token;
    const socket = new Phoenix.Socket(wsBase + "/socket", opts);
    window.sockets = (window.sockets || []).concat([socket]);
    let opened = false;
    socket.onOpen(() => { opened = true; });
    socket.onError(() => { if (!opened) resolve({opened: false}); });
    socket.connect();
    socket.channel(topic, {}).join()
      .receive("ok", (r) => resolve({opened, joined: true, response: r}))
      .receive("error", (e) => resolve({opened, joined: false, error: e}));
  });
</script>`;

let browser, profileDir, pages;

before(async () => {
  pages = http.createServer((req, res) => {
    if (req.url === "/phoenix.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(PHOENIX_JS);
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
    }
  });
  await new Promise((r) => pages.listen(0, "127.0.0.1", r));
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "headcount-chromium-"));
  browser = await chromium.launchPersistentContext(profileDir, { executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close();
  if (pages) pages.close();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});

test("Chromium: authToken joins from an allowed origin; a foreign origin and no token are refused", async (t) => {
  const pageOrigin = `http://127.0.0.1:${pages.address().port}`;
  const allowed = await startServer(t, ["--allowed-origins", `https://app.example.com,${pageOrigin}`]);
  const foreign = await startServer(t, ["--allowed-origins", "https://app.example.com"]);
  const page = await browser.newPage();
  t.after(() => page.close());
  await page.goto(`${pageOrigin}/`);
  const ws = (server) => server.base.replace(/^http/, "ws");
  const token = userToken({ topics: ["rooms:*"] });

  const ok = await page.evaluate(([base, tok]) => window.run(base, tok, "rooms:browser"), [ws(allowed), token]);
  assert.deepEqual(ok, { opened: true, joined: true, response: {} });
  const s = await stats(allowed);
  assert.equal(s.socket_count, 1);
  assert.equal(count(s, "rooms:browser"), 1);

  // Outside the token's topics.
  const unauthorized = await page.evaluate(([base, tok]) => window.run(base, tok, "patterns:stats"), [ws(allowed), token]);
  assert.deepEqual(unauthorized, { opened: true, joined: false, error: { reason: "unauthorized" } });

  // No token from the allowed origin: refused at the upgrade.
  const missing = await page.evaluate((base) => window.run(base, null, "rooms:browser"), ws(allowed));
  assert.deepEqual(missing, { opened: false });
  assert.equal(await metric(allowed, "headcount_auth_failures_total", "missing_token"), 1);

  // The same good token from an origin the node does not list.
  const refused = await page.evaluate(([base, tok]) => window.run(base, tok, "rooms:browser"), [ws(foreign), token]);
  assert.deepEqual(refused, { opened: false });
  assert.equal(await metric(foreign, "headcount_sockets_refused_total", "origin"), 1);
  assert.equal(await metric(foreign, "headcount_auth_failures_total", "missing_token"), 0);
  assert.equal((await stats(foreign)).socket_count, 0);

  await page.close();
  await eventually("the page's sockets counted down", async () => {
    const s = await stats(allowed);
    return s.socket_count === 0 && s.connection_count === 0 ? s : null;
  });
});
