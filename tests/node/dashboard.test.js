// The dashboard page (GET /) in a real headless Chromium: live counts as
// Phoenix clients come and go, a phone-width layout, reconnecting after the
// node restarts, and the cluster view (topics × nodes, ages, the degraded
// banner) fed by a fake node that answers get_cluster_stats with a
// three-node cluster; bounded topic lists ("N more topics", SPEC §7.3) and
// users of presence topics (GET /api/presence/stats, §9.2), from the fake
// node and, for the bound, from the real one. Screenshots go to artifacts/.
"use strict";

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");
const { Socket } = require("phoenix");
const WebSocket = require("ws");
const { stopServer, ...support } = require("./support/server");

const ARTIFACTS = path.resolve(__dirname, "..", "..", "artifacts");
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
];
const NODE = "dash@test";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts `headcount serve` as this file's node. */
function startServer(bind = "127.0.0.1:0") {
  return support.startServer({ bind, args: ["--node", NODE, "--stats-interval-ms", "1000"] });
}

/** A Phoenix client joined to `topic`; resolves once the join is ok. */
function joinedClient(base, topic) {
  return new Promise((resolve, reject) => {
    const socket = new Socket(`${base.replace(/^http/, "ws")}/socket`, { transport: WebSocket, reconnectAfterMs: () => 60000 });
    socket.connect();
    const channel = socket.channel(topic, {});
    channel.join()
      .receive("ok", () => resolve(socket))
      .receive("error", (e) => reject(new Error(`join refused: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error("join timed out")));
  });
}

async function figures(page) {
  return page.evaluate(() => {
    const read = (name) => {
      const el = document.querySelector(`[data-metric="${name}"]`);
      return el ? el.textContent : null;
    };
    return {
      connection_count: read("connection_count"),
      stream_count: read("stream_count"),
      socket_count: read("socket_count"),
      cluster_size: read("cluster_size"),
    };
  });
}

/** Waits until the page's data-metric texts equal `want` (plain numbers). */
async function waitForFigures(page, want, timeout) {
  const expected = Object.fromEntries(Object.entries(want).map(([k, v]) => [k, String(v)]));
  try {
    await page.waitForFunction((exp) => Object.entries(exp).every(([name, text]) => {
      const el = document.querySelector(`[data-metric="${name}"]`);
      return el && el.textContent === text;
    }), expected, { timeout, polling: 20 });
  } catch (e) {
    assert.deepEqual(await figures(page), { ...(await figures(page)), ...expected }, `figures not reached within ${timeout} ms`);
  }
}

async function apiStats(base) {
  const res = await fetch(`${base}/api/stats`);
  assert.equal(res.status, 200);
  return res.json();
}

let browser, server, profileDir;

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "headcount-chromium-"));
  browser = await chromium.launchPersistentContext(profileDir, {
    executablePath: "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 860 },
    colorScheme: "dark",
  });
  server = await startServer();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
});

test("the page is served at / and /dashboard, self-contained", async () => {
  for (const route of ["/", "/dashboard"]) {
    const res = await fetch(`${server.base}${route}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    assert.match(res.headers.get("content-security-policy"), /default-src 'none'/);
    const html = await res.text();
    assert.doesNotMatch(html.replace("http://www.w3.org/2000/svg", ""), /https?:\/\//, "no external URL in the page");
    for (const name of ["connection_count", "stream_count", "socket_count", "cluster_size"]) {
      assert.ok(html.includes(`data-metric="${name}"`), name);
    }
  }
});

test("dashboard shows 5 more memberships within 2 s, then goes back", async (t) => {
  const page = await browser.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("websocket", (ws) => requests.push(ws.url()));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${server.base}/dashboard`);
  await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });

  // The page's own socket joins patterns:stats and patterns:stream, so it
  // counts itself: its figures must equal the node's.
  const baseline = await apiStats(server.base);
  assert.equal(baseline.socket_count, 1, "only the dashboard is connected");
  assert.equal(baseline.connection_count, 2, "the dashboard joins two channels");
  await waitForFigures(page, {
    connection_count: baseline.connection_count,
    stream_count: baseline.stream_count,
    socket_count: baseline.socket_count,
    cluster_size: 1,
  }, 2000);

  const clients = await Promise.all(Array.from({ length: 5 }, () => joinedClient(server.base, "patterns:stream")));
  const joinedAt = Date.now();
  await waitForFigures(page, {
    connection_count: baseline.connection_count + 5,
    stream_count: baseline.stream_count + 5,
    socket_count: baseline.socket_count + 5,
  }, 2000);
  const lag = Date.now() - joinedAt;
  assert.ok(lag < 2000, `page caught up in ${lag} ms`);
  t.diagnostic(`the page showed the 5 joins ${lag} ms after the last join reply`);
  const cell = page.locator(`td[data-topic="patterns:stream"][data-node="${NODE}"]`);
  assert.equal(await cell.textContent(), String(baseline.stream_count + 5));

  // Events on patterns:stream show up in the list.
  const events = [
    { type: "pattern_detected", data: { pattern_type: "burst", confidence: 0.93, severity: "high" } },
    { type: "pattern_matched", data: { pattern_id: "p-17", confidence: 0.71, type: "sequence" } },
    { type: "algedonic_signal", data: { type: "pain", intensity: 0.95, source: "s1" } },
    { type: "patterns_indexed", data: { count: 42, deduplicated: 3, source: "indexer" } },
  ];
  const res = await fetch(`${server.base}/api/events`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(events),
  });
  assert.equal(res.status, 202);
  for (const name of ["pattern_detected", "pattern_matched", "algedonic_pattern", "pattern_indexed"]) {
    await page.waitForSelector(`#events li[data-event="${name}"]`, { timeout: 2000 });
  }
  assert.match(await page.locator('#events li[data-event="pattern_detected"]').textContent(), /burst/);

  await sleep(300); // let the chart take the last sample
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png"), fullPage: true });

  for (const c of clients) c.disconnect();
  await waitForFigures(page, {
    connection_count: baseline.connection_count,
    stream_count: baseline.stream_count,
    socket_count: baseline.socket_count,
  }, 2000);

  const origin = server.base, wsOrigin = server.base.replace(/^http/, "ws");
  for (const url of requests) {
    assert.ok(url.startsWith(origin + "/") || url.startsWith(wsOrigin + "/") || url.startsWith("data:"), `no request leaves the node: ${url}`);
  }
  assert.deepEqual(errors, []);
  await page.close();
});

test("readable at phone width: nothing wider than the screen", async () => {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
  await waitForFigures(page, { connection_count: 2, socket_count: 1 }, 2000);
  const [scrollWidth, innerWidth] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scrollWidth <= innerWidth, `page is ${scrollWidth}px wide on a ${innerWidth}px screen`);
  const fontSize = await page.evaluate(() => parseFloat(getComputedStyle(document.querySelector('[data-metric="connection_count"]')).fontSize));
  assert.ok(fontSize >= 24, `headline figures stay large (${fontSize}px)`);
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-phone.png"), fullPage: true });
  await page.close();
});

test("reconnects by itself after the node restarts on the same port", async () => {
  const page = await browser.newPage();
  await page.goto(`${server.base}/`);
  await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
  await waitForFigures(page, { connection_count: 2, socket_count: 1 }, 2000);

  const bind = server.addr;
  await stopServer(server);
  await page.waitForSelector('#status[data-status="offline"]', { timeout: 5000 });
  assert.equal(await page.locator("#offline").isVisible(), true, "the offline banner shows");

  server = await startServer(bind);
  await page.waitForSelector('#status[data-status="live"]', { timeout: 10000 });
  await waitForFigures(page, { connection_count: 2, stream_count: 1, socket_count: 1 }, 2000);
  assert.equal(await page.locator("#offline").isVisible(), false, "the offline banner is gone");
  const stats = await apiStats(server.base);
  assert.equal(stats.socket_count, 1, "the page holds exactly one socket after reconnecting");
  await page.close();
});

// ---- the cluster view, against a fake node --------------------------------

/** Serves the real page and a minimal Phoenix V2 endpoint whose
 *  get_cluster_stats answers whatever `fake.cluster` holds (each request's
 *  payload kept in `fake.clusterAsks`). GET /api/presence/stats answers
 *  from `fake.presence`: null → 404 "not found" (a node without the route);
 *  else no topic → 400, a topic in it → 200 with its figures, another → 404.
 *  Every HTTP request target is kept in `fake.requests`. */
async function fakeNode(html) {
  const fake = { local: null, cluster: null, sockets: new Set(), clusterAsks: [], presence: null, requests: [] };
  const httpServer = http.createServer((req, res) => {
    fake.requests.push(req.url);
    const url = new URL(req.url, "http://x");
    const json = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/" || url.pathname === "/dashboard") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(html);
    } else if (url.pathname === "/api/presence/stats" && fake.presence) {
      const topic = url.searchParams.get("topic");
      if (topic === null) json(400, { error: "topic required" });
      else if (fake.presence[topic]) json(200, fake.presence[topic]);
      else json(404, { error: "not a presence topic" });
    } else {
      json(404, { error: "not found" });
    }
  });
  const wss = new WebSocket.Server({ server: httpServer, path: "/socket/websocket" });
  wss.on("connection", (ws) => {
    fake.sockets.add(ws);
    ws.on("close", () => fake.sockets.delete(ws));
    ws.on("message", (data) => {
      const [joinRef, ref, topic, event, payload] = JSON.parse(String(data));
      const reply = (response) => ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response }]));
      if (event === "phx_join") {
        reply({});
        if (topic === "patterns:stats") ws.send(JSON.stringify([joinRef, null, topic, "stats_update", { connections: fake.local }]));
        fake.statsJoinRef = topic === "patterns:stats" ? joinRef : fake.statsJoinRef;
      } else if (event === "get_cluster_stats") {
        fake.clusterAsks.push(payload);
        reply(fake.cluster);
      } else {
        reply({});
      }
    });
  });
  await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
  fake.base = `http://127.0.0.1:${httpServer.address().port}`;
  fake.push = (event, payload) => {
    for (const ws of fake.sockets) ws.send(JSON.stringify([fake.statsJoinRef, null, "patterns:stats", event, payload]));
  };
  fake.close = () => new Promise((r) => {
    for (const ws of fake.sockets) ws.terminate();
    wss.close();
    httpServer.close(r);
    httpServer.closeAllConnections();
  });
  return fake;
}

const local = (stream, other) => ({
  node: "a@h", connection_count: stream + other + 1, stream_count: stream, socket_count: stream + other + 1,
  connections_by_topic: { "patterns:stream": { "a@h": stream }, "rooms:lobby": { "a@h": other }, "patterns:stats": { "a@h": 1 } },
  timestamp: new Date().toISOString(),
});

test("cluster view: topics × nodes, each node's age, the degraded banner", async () => {
  const html = await (await fetch(`${server.base}/`)).text();
  const fake = await fakeNode(html);
  fake.local = local(9, 2);
  fake.cluster = {
    connection_count: 12 + 15 + 4, stream_count: 9 + 11 + 3, socket_count: 12 + 15 + 4,
    connections_by_topic: {
      "patterns:stream": { "a@h": 9, "b@h": 11, "c@h": 3 },
      "rooms:lobby": { "a@h": 2, "b@h": 4 },
      "patterns:stats": { "a@h": 1, "c@h": 1 },
    },
    nodes: {
      "a@h": { connection_count: 12, stream_count: 9, socket_count: 12, age_ms: 40 },
      "b@h": { connection_count: 15, stream_count: 11, socket_count: 15, age_ms: 1800 },
      "c@h": { connection_count: 4, stream_count: 3, socket_count: 4, age_ms: 120 },
    },
    total_connections: 31, cluster_size: 3, source: "cluster", degraded: false,
    node: "a@h", timestamp: new Date().toISOString(),
  };
  const page = await browser.newPage();
  try {
    await page.goto(`${fake.base}/`);
    await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
    await waitForFigures(page, { cluster_size: 3, connection_count: 31, stream_count: 23, socket_count: 31 }, 4000);
    assert.ok(fake.clusterAsks.length > 0);
    for (const ask of fake.clusterAsks) assert.deepEqual(ask, { limit: 100 }, "the page asks for the 100 largest topics");
    assert.equal(await page.locator("#topics-more").count(), 0, "no 'more topics' line when nothing was left out");
    const cell = (topic, node) => page.locator(`td[data-topic="${topic}"][data-node="${node}"]`).textContent();
    assert.equal(await cell("patterns:stream", "b@h"), "11");
    assert.equal(await cell("rooms:lobby", "c@h"), "0");
    assert.equal(await page.locator('th[data-node="b@h"] .age').textContent(), "age 1.8 s");
    assert.equal(await page.locator('th[data-node="c@h"] .age').textContent(), "age 120 ms");
    assert.equal(await page.locator("#degraded").isVisible(), false);
    assert.match(await page.locator("#mode").textContent(), /cluster · 3 nodes/);

    // This node's own change (stats_changed) shows at once, merged into the
    // cluster figures, without waiting for the next get_cluster_stats.
    fake.push("stats_changed", local(14, 2));
    await waitForFigures(page, { connection_count: 36, stream_count: 28, cluster_size: 3 }, 500);
    assert.equal(await cell("patterns:stream", "a@h"), "14");
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-cluster.png"), fullPage: true });

    // Redis gone: the node answers with its own figures, degraded.
    fake.cluster = {
      ...fake.local, connection_count: 17, stream_count: 14, socket_count: 17,
      nodes: { "a@h": { connection_count: 17, stream_count: 14, socket_count: 17, age_ms: 0 } },
      total_connections: 17, cluster_size: 1, source: "local", degraded: true,
      error: "redis: connection refused",
    };
    await page.waitForSelector("#degraded", { state: "visible", timeout: 4000 });
    assert.match(await page.locator("#degraded").textContent(), /CLUSTER DEGRADED.*redis: connection refused/s);
    await waitForFigures(page, { cluster_size: 1, connection_count: 17 }, 1000);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-degraded.png"), fullPage: true });
  } finally {
    await page.close();
    await fake.close();
  }
});

/** The topics of the table's rows, top to bottom, with their totals. */
async function tableRows(page) {
  return page.evaluate(() => [...document.querySelectorAll("#topics tbody tr[data-topic]")].map((tr) => {
    const cells = [...tr.querySelectorAll("td[data-node]")].map((td) => Number(td.textContent));
    return { topic: tr.dataset.topic, sum: cells.reduce((a, b) => a + b, 0) };
  }));
}

test("bounded topics: largest first, the rest as 'N more topics'", async () => {
  const html = await (await fetch(`${server.base}/`)).text();
  const fake = await fakeNode(html);
  // This node's pushes carry its 2 largest topics of 7; the cluster's
  // answer its 3 largest of 43. rooms:tiny is in the cluster's top but not
  // in this node's pushes: its a@h figure comes from the cluster's answer.
  fake.local = {
    node: "a@h", connection_count: 40, stream_count: 20, socket_count: 30,
    connections_by_topic: { "patterns:stream": { "a@h": 20 }, "rooms:lobby": { "a@h": 9 } },
    topics_omitted: 5, timestamp: new Date().toISOString(),
  };
  fake.cluster = {
    connection_count: 90, stream_count: 30, socket_count: 70,
    connections_by_topic: {
      "rooms:lobby": { "a@h": 9, "b@h": 30 },
      "patterns:stream": { "a@h": 20, "b@h": 10 },
      "rooms:tiny": { "a@h": 1, "b@h": 25 },
    },
    topics_omitted: 40,
    nodes: {
      "a@h": { connection_count: 40, stream_count: 20, socket_count: 30, age_ms: 10 },
      "b@h": { connection_count: 50, stream_count: 10, socket_count: 40, age_ms: 30 },
    },
    total_connections: 90, cluster_size: 2, source: "cluster", degraded: false,
    node: "a@h", timestamp: new Date().toISOString(),
  };
  const page = await browser.newPage();
  try {
    await page.goto(`${fake.base}/`);
    await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
    await waitForFigures(page, { cluster_size: 2, connection_count: 90 }, 4000);
    await page.waitForSelector("#topics-more", { timeout: 4000 });
    assert.deepEqual(await tableRows(page), [
      { topic: "rooms:lobby", sum: 39 },
      { topic: "patterns:stream", sum: 30 },
      { topic: "rooms:tiny", sum: 26 },
    ]);
    assert.equal(await page.locator('td[data-topic="rooms:tiny"][data-node="a@h"]').textContent(), "1");
    assert.match(await page.locator("#topics-more").textContent(), /^… and 40 more topics\b/);
    assert.equal(await page.locator("#topics-more").getAttribute("data-omitted"), "40");
    assert.match(await page.locator("#topics-meta").textContent(), /43 topics · largest 3 shown/);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-bounded.png"), fullPage: true });

    // Without the cluster (degraded): this node's pushes alone.
    fake.cluster = {
      ...fake.local, nodes: { "a@h": { connection_count: 40, stream_count: 20, socket_count: 30, age_ms: 0 } },
      total_connections: 40, cluster_size: 1, source: "local", degraded: true, error: "redis: timeout",
    };
    await page.waitForSelector("#degraded", { state: "visible", timeout: 4000 });
    await page.waitForFunction(() => document.querySelector("#topics-more")?.dataset.omitted === "5", null, { timeout: 2000 });
    assert.deepEqual((await tableRows(page)).map((r) => r.topic), ["patterns:stream", "rooms:lobby"]);
  } finally {
    await page.close();
    await fake.close();
  }
});

test("presence topics show their users; the node is asked sparingly", async () => {
  const html = await (await fetch(`${server.base}/`)).text();
  const fake = await fakeNode(html);
  fake.local = local(9, 6);
  fake.cluster = { ...fake.local, nodes: { "a@h": { connection_count: 16, stream_count: 9, socket_count: 16, age_ms: 0 } },
    total_connections: 16, cluster_size: 1, source: "local", degraded: false };
  fake.presence = { "rooms:lobby": { connections: 6, users: 4 } };
  const page = await browser.newPage();
  const presenceAsks = () => fake.requests.filter((u) => u.startsWith("/api/presence/stats"));
  const asked = (topic) => presenceAsks().filter((u) => u === `/api/presence/stats?topic=${encodeURIComponent(topic)}`).length;
  try {
    await page.goto(`${fake.base}/`);
    await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
    // The first round runs as the page goes live.
    await page.waitForSelector('td[data-users="rooms:lobby"]', { timeout: 4000 });
    assert.equal(await page.locator('td[data-users="rooms:lobby"]').textContent(), "4");
    assert.equal(await page.locator('#topics thead th:last-child').textContent(), "users");
    const streamRow = page.locator('tr[data-topic="patterns:stream"] td:last-child');
    assert.equal(await streamRow.textContent(), "–", "no users shown for a topic without presence");
    assert.equal(presenceAsks()[0], "/api/presence/stats", "the first request asks whether the route exists");

    // Later rounds: only presence topics again.
    fake.presence["rooms:lobby"] = { connections: 7, users: 5 };
    await page.evaluate(() => window.headcount.refreshPresence());
    await page.evaluate(() => window.headcount.refreshPresence());
    assert.equal(await page.locator('td[data-users="rooms:lobby"]').textContent(), "5");
    assert.equal(presenceAsks().filter((u) => u === "/api/presence/stats").length, 1, "the route is probed once");
    assert.equal(asked("patterns:stream"), 1, "a topic without presence is asked once");
    assert.equal(asked("patterns:stats"), 1);
    assert.ok(asked("rooms:lobby") >= 3, `rooms:lobby asked ${asked("rooms:lobby")} times`);
    await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-presence.png"), fullPage: true });
  } finally {
    await page.close();
    await fake.close();
  }

  // A node without the route: one request, then never again.
  const bare = await fakeNode(html);
  bare.local = local(2, 1);
  bare.cluster = fake.cluster;
  const page2 = await browser.newPage();
  try {
    await page2.goto(`${bare.base}/`);
    await page2.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
    await page2.waitForFunction(() => window.headcount.state.presence.route === false, null, { timeout: 4000 });
    for (let i = 0; i < 3; i++) await page2.evaluate(() => window.headcount.refreshPresence());
    const asks = bare.requests.filter((u) => u.startsWith("/api/presence/stats"));
    assert.deepEqual(asks, ["/api/presence/stats"]);
    assert.equal(await page2.locator("td[data-users]").count(), 0);
  } finally {
    await page2.close();
    await bare.close();
  }
});

// ---- the bound against the real node ----------------------------------------

/** A raw V2 socket that joins `topics` and resolves once every join is ok. */
function joinAll(base, topics) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace(/^http/, "ws")}/socket/websocket?vsn=2.0.0`);
    const waiting = new Set();
    ws.on("error", reject);
    ws.on("open", () => topics.forEach((topic, i) => {
      waiting.add(String(i + 1));
      ws.send(JSON.stringify([String(i + 1), String(i + 1), topic, "phx_join", {}]));
    }));
    ws.on("message", (data) => {
      const [, ref, topic, event, payload] = JSON.parse(String(data));
      if (event !== "phx_reply" || !waiting.has(ref)) return;
      if (payload.status !== "ok") return reject(new Error(`join ${topic}: ${JSON.stringify(payload)}`));
      waiting.delete(ref);
      if (waiting.size === 0) resolve(ws);
    });
  });
}

test("real node: the 100 largest topics, and 'N more topics' for the rest", async (t) => {
  const node = await support.startServer({
    args: ["--node", NODE, "--allow-topic", "rooms:*", "--stats-interval-ms", "1000",
      "--max-joins-per-second", "10000", "--max-joins-burst", "10000"],
  });
  const sockets = [];
  const page = await browser.newPage();
  try {
    // The one conditional skip in this file: until the server side of
    // bounded stats (SPEC §7.3) is in, /api/stats has no topics_omitted and
    // there is nothing to bound. It turns itself on once the field appears.
    const probe = await (await fetch(`${node.base}/api/stats?limit=1`)).json();
    if (!("topics_omitted" in probe)) {
      const note = "/api/stats?limit=1 has no topics_omitted: bounded stats (SPEC §7.3) are not in this headcount build yet";
      t.diagnostic(`NOTE: skipping the real-node bound test: ${note}`);
      t.skip(note);
      return;
    }
    // 120 rooms topics: rooms:big with 3 members, 119 with one; with the
    // page's patterns:stats and patterns:stream, 122 topics.
    const rooms = Array.from({ length: 119 }, (_, i) => `rooms:${String(i).padStart(3, "0")}`);
    sockets.push(await joinAll(node.base, ["rooms:big", ...rooms.slice(0, 99)]));
    sockets.push(await joinAll(node.base, ["rooms:big", ...rooms.slice(99)]));
    sockets.push(await joinAll(node.base, ["rooms:big"]));
    await page.goto(`${node.base}/`);
    await page.waitForSelector('#status[data-status="live"]', { timeout: 5000 });
    const stats = await (await fetch(`${node.base}/api/stats`)).json();
    assert.equal(Object.keys(stats.connections_by_topic).length, 122);
    await waitForFigures(page, { connection_count: stats.connection_count, socket_count: 4 }, 3000);
    await page.waitForFunction(() => document.querySelector("#topics-more")?.dataset.omitted === "22", null, { timeout: 3000 })
      .catch(async () => assert.fail(`no '22 more topics' line: ${await page.locator("#topics tbody").textContent()}`));
    assert.match(await page.locator("#topics-more").textContent(), /… and 22 more topics/);
    const rows = await tableRows(page);
    assert.equal(rows.length, 100, "100 rows");
    assert.deepEqual(rows[0], { topic: "rooms:big", sum: 3 });
    for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].sum >= rows[i].sum, "largest first");
  } finally {
    await page.close();
    for (const ws of sockets) ws.terminate();
    await stopServer(node);
  }
});
