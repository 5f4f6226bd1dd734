// Presence (SPEC §9) with the official phoenix.js `Presence` class, unchanged:
// `onSync` + `list()` in Node (over `ws`) and in a real Chromium page, against
// one node, against a cluster of nodes on a real redis-server (cross-node
// joins, a killed node, a stopped node, a Redis outage), with signed tokens,
// with the count-only mode of crowded topics (§9.3) and the `meta` limits.
// Every wait is bounded; the bounds asserted are the contract's.
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const WebSocket = require("ws");
const { Socket, Presence } = require("phoenix");
const support = require("./support/server");

const TIMEOUT = 10000;
const TOPIC = "rooms:lobby";
const PRESENCE_ARGS = ["--allow-topic", "rooms:*", "--presence-topic", "rooms:*"];
/** SPEC §9.2: a diff from node A reaches members on node B within this. */
const CROSS_NODE_MS = 500;
const NODE_TTL_MS = 1500;
const META_KEYS = new Set(["phx_ref", "node", "online_at", "info", "meta"]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `headcount serve` with presence on rooms:*, killed when the test ends. */
async function startServer(t, args = []) {
  const server = await support.startServer({ args: [...PRESENCE_ARGS, ...args], timeoutMs: TIMEOUT });
  t.after(() => server.proc.kill("SIGKILL"));
  return server;
}

/** A throw-away redis-server, stopped when the test ends. */
async function startRedis(t) {
  const redis = await support.startRedis();
  t.after(() => redis.stop());
  return redis;
}

/** Nodes `names` in cluster mode on `redis`, each seeing all of them. */
async function startCluster(t, redis, names, args = []) {
  const nodes = [];
  for (const name of names) {
    nodes.push(await startServer(t, ["--node", name, "--redis", redis.url, "--node-ttl-ms", String(NODE_TTL_MS), ...args]));
  }
  for (const node of nodes) {
    await until(`${node.node} sees ${names.length} nodes`, async () => (await getJson(node, "/api/stats/cluster")).cluster_size === names.length);
  }
  return nodes;
}

/** A connected phoenix Socket (no reconnects during a test), disconnected when the test ends. */
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

/** Polls `check` every 20 ms until it returns a truthy value; fails after `ms`. */
async function until(what, check, ms = TIMEOUT) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms (last: ${JSON.stringify(last)})`);
    await sleep(20);
  }
}

async function getJson(server, route) {
  const res = await fetch(`${server.base}${route}`);
  assert.equal(res.status, 200, `${route}: ${res.status}`);
  return res.json();
}

/**
 * A member of `topic` on `server`: a phoenix Socket, its channel and a
 * phoenix.js `Presence` on it, plus every raw presence_state, presence_diff
 * and occupancy push it got, with arrival times.
 */
async function member(t, server, params = {}, { topic = TOPIC, socketOpts = {} } = {}) {
  const socket = await connect(t, server, socketOpts);
  const channel = socket.channel(topic, params);
  const presence = new Presence(channel);
  const m = { server, socket, channel, presence, states: [], diffs: [], occupancy: [], listeners: new Set() };
  channel.on("presence_state", (p) => m.states.push({ at: Date.now(), p }));
  channel.on("presence_diff", (p) => m.diffs.push({ at: Date.now(), p }));
  channel.on("occupancy", (p) => m.occupancy.push({ at: Date.now(), p }));
  presence.onSync(() => {
    for (const f of [...m.listeners]) f();
  });
  m.joined = await reply(channel.join(TIMEOUT));
  return m;
}

/** `{KEY: number of metas}` of a member's `list()`, keys sorted. */
function view(m) {
  const out = {};
  for (const [key, n] of m.presence.list((k, { metas }) => [k, metas.length]).sort(([a], [b]) => (a < b ? -1 : 1))) {
    out[key] = n;
  }
  return out;
}

/** Every meta of a member's `list()`, as [KEY, META]. */
function metas(m) {
  return m.presence.list((k, { metas: ms }) => ms.map((meta) => [k, meta])).flat();
}

/** `KEY/phx_ref` of every meta, sorted: what must be the same for everyone. */
function refs(m) {
  return metas(m).map(([k, meta]) => `${k}/${meta.phx_ref}`).sort();
}

/** Asserts no phx_ref appears twice in a member's list. */
function assertNoDuplicates(m, label) {
  const all = metas(m).map(([, meta]) => meta.phx_ref);
  assert.equal(new Set(all).size, all.length, `${label}: duplicated phx_ref in ${JSON.stringify(m.presence.list())}`);
}

/** Waits until every member's list() is `expected` and all hold the very same metas. */
async function converge(members, expected, what, ms = TIMEOUT) {
  await until(`${what}: every list() is ${JSON.stringify(expected)}`, () => {
    const views = members.map(view);
    if (!views.every((v) => JSON.stringify(v) === JSON.stringify(expected))) return false;
    const first = JSON.stringify(refs(members[0]));
    return members.every((m) => JSON.stringify(refs(m)) === first);
  }, ms).catch((e) => {
    e.message += `\nviews: ${JSON.stringify(members.map(view))}`;
    throw e;
  });
  members.forEach((m, i) => assertNoDuplicates(m, `${what}, member ${i}`));
}

/**
 * Resolves with the time (Date.now()) of the first sync of `m` at which
 * `pred(m)` holds (at once if it holds now); rejects after `ms`.
 */
function whenSynced(m, pred, what, ms = TIMEOUT) {
  if (pred(m)) return Promise.resolve(Date.now());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      m.listeners.delete(check);
      reject(new Error(`${what}: not within ${ms} ms; list ${JSON.stringify(view(m))}`));
    }, ms);
    const check = () => {
      if (pred(m)) {
        const at = Date.now();
        clearTimeout(timer);
        m.listeners.delete(check);
        resolve(at);
      }
    };
    m.listeners.add(check);
  });
}

const hasKey = (key) => (m) => view(m)[key] !== undefined;
const lacksKey = (key) => (m) => view(m)[key] === undefined;
const noMetaOf = (node) => (m) => metas(m).every(([, meta]) => meta.node !== node);

/** Checks one META against §9.1. */
function assertMeta(meta, node, since, label) {
  for (const k of Object.keys(meta)) assert.ok(META_KEYS.has(k), `${label}: unexpected field ${k} in ${JSON.stringify(meta)}`);
  assert.equal(typeof meta.phx_ref, "string", `${label}: phx_ref`);
  assert.ok(meta.phx_ref.length > 0, `${label}: empty phx_ref`);
  assert.equal(meta.node, node, `${label}: node`);
  assert.equal(typeof meta.online_at, "number", `${label}: online_at ${JSON.stringify(meta)}`);
  assert.ok(Number.isInteger(meta.online_at), `${label}: online_at is unix ms`);
  assert.ok(meta.online_at >= since - 5000 && meta.online_at <= Date.now() + 5000, `${label}: online_at ${meta.online_at} is not now`);
}

/** A presence member in a child process, for SIGKILL (no close frame). */
async function doomedMember(t, server, params) {
  const child = spawn(process.execPath, [path.join(__dirname, "support", "presence_client.js"), server.url, TOPIC, JSON.stringify(params)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.after(() => child.kill("SIGKILL"));
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child never joined: ${err}`)), TIMEOUT);
    child.stdout.on("data", (d) => {
      if (String(d).includes("joined")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`child exited ${code}: ${err}`)));
  });
  return {
    kill: () => new Promise((resolve) => {
      child.once("exit", (code, signal) => resolve(signal));
      child.kill("SIGKILL");
    }),
  };
}

/** SIGKILL or SIGTERM a node and wait for it to exit. */
function stopNode(server, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.proc.kill("SIGKILL"), TIMEOUT);
    server.proc.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    server.proc.kill(signal);
  });
}

function ms(list) {
  return list.map((x) => `${x} ms`).join(", ");
}

test("one node: tabs of one user are one key with a meta each; an abrupt close, a leave and anonymous members", async (t) => {
  const server = await startServer(t);
  const since = Date.now();
  const a1 = await member(t, server, { user_id: "alice", meta: { device: "phone" } });
  const a2 = await member(t, server, { user_id: "alice" });
  const doomed = await doomedMember(t, server, { user_id: "alice", meta: { device: "doomed" } });
  const bob = await member(t, server, { user_id: "bob" });
  const everyone = [a1, a2, bob];
  await converge(everyone, { alice: 3, bob: 1 }, "three alice tabs and bob");

  for (const [i, m] of everyone.entries()) {
    for (const [key, meta] of metas(m)) assertMeta(meta, server.node, since, `member ${i}, ${key}`);
    const devices = metas(m).filter(([k]) => k === "alice").map(([, meta]) => (meta.meta ? meta.meta.device : "-")).sort();
    assert.deepEqual(devices, ["-", "doomed", "phone"], "the join param meta is under \"meta\", only where given");
    const [[, bobMeta]] = metas(m).filter(([k]) => k === "bob");
    assert.equal("meta" in bobMeta, false, "no meta key without a meta param");
  }
  // A joiner's own presence_state already lists itself.
  assert.ok(JSON.stringify(bob.states[0].p.bob.metas).includes(server.node));

  // One tab vanishes without a close frame.
  assert.equal(await doomed.kill(), "SIGKILL");
  await converge(everyone, { alice: 2, bob: 1 }, "the killed tab left");
  for (const m of everyone) {
    assert.ok(metas(m).every(([, meta]) => !meta.meta || meta.meta.device !== "doomed"), "the killed tab's meta is the one that left");
  }

  // A leave.
  await reply(bob.channel.leave(TIMEOUT));
  await converge([a1, a2], { alice: 2 }, "bob left");

  // Anonymous: no user_id, or a user_id that is not a string.
  const anon1 = await member(t, server, {});
  const anon2 = await member(t, server, { user_id: 42 });
  const all = [a1, a2, anon1, anon2];
  const anonKeys = await until("two anonymous keys everywhere", () => {
    const keys = all.map((m) => Object.keys(view(m)).filter((k) => k !== "alice"));
    return keys.every((k) => k.length === 2 && JSON.stringify(k) === JSON.stringify(keys[0])) ? keys[0] : null;
  });
  for (const key of anonKeys) assert.match(key, /^anon:\d+$/);
  assert.notEqual(anonKeys[0], anonKeys[1]);
  await converge(all, { alice: 2, [anonKeys[0]]: 1, [anonKeys[1]]: 1 }, "alice and two anonymous members");
});

test("tokens: the KEY is the token's sub (user_id ignored) and the META carries its info", async (t) => {
  const secret = "presence-test-secret";
  const token = (sub, info) => execFileSync(support.BIN, ["token", "--secret", secret, "--sub", sub, ...(info ? ["--info", JSON.stringify(info)] : [])]).toString().trim();
  const server = await startServer(t, ["--auth-secret", secret]);
  const since = Date.now();
  // Token as the phoenix.js authToken (subprotocol), and as a connect param.
  const carol = await member(t, server, { user_id: "mallory", meta: { tab: 1 } }, { socketOpts: { authToken: token("carol", { name: "C" }) } });
  const dave = await member(t, server, {}, { socketOpts: { params: { token: token("dave") } } });
  await converge([carol, dave], { carol: 1, dave: 1 }, "carol and dave by their tokens");
  for (const m of [carol, dave]) {
    const byKey = Object.fromEntries(metas(m));
    assertMeta(byKey.carol, server.node, since, "carol");
    assertMeta(byKey.dave, server.node, since, "dave");
    assert.deepEqual(byKey.carol.info, { name: "C" });
    assert.deepEqual(byKey.carol.meta, { tab: 1 }, "info and the join param meta side by side");
    assert.equal("info" in byKey.dave, false, "no info without one in the token");
  }
});

test("cluster: one list everywhere, one key per user across nodes, cross-node latency, a killed and a stopped node", async (t) => {
  const redis = await startRedis(t);
  const [n1, n2, n3] = await startCluster(t, redis, ["n1", "n2", "n3"]);
  const since = Date.now();
  const occ = { occupancy: true };
  const a1 = await member(t, n1, { user_id: "alice", ...occ });
  const bob = await member(t, n1, { user_id: "bob", ...occ });
  const a2 = await member(t, n2, { user_id: "alice", ...occ });
  const dave = await member(t, n2, { user_id: "dave", ...occ });
  const a3 = await member(t, n3, { user_id: "alice", ...occ });
  const carol = await member(t, n3, { user_id: "carol", ...occ });
  const everyone = [a1, bob, a2, dave, a3, carol];
  await converge(everyone, { alice: 3, bob: 1, carol: 1, dave: 1 }, "six members on three nodes");
  for (const m of everyone) {
    const nodes = metas(m).filter(([k]) => k === "alice").map(([, meta]) => meta.node).sort();
    assert.deepEqual(nodes, ["n1", "n2", "n3"], "alice: one key, a meta per node");
    for (const [key, meta] of metas(m)) assertMeta(meta, meta.node, since, key);
  }

  // users counts alice once: get_presence_stats, the HTTP route, occupancy pushes.
  const counts = async (expected) => {
    for (const [m, node] of [[a1, n1], [a2, n2], [a3, n3]]) {
      if (node.proc.exitCode !== null || node.proc.signalCode !== null) continue;
      await until(`get_presence_stats on ${node.node} is ${JSON.stringify(expected)}`, async () =>
        JSON.stringify(await reply(m.channel.push("get_presence_stats", { topic: TOPIC }))) === JSON.stringify(expected));
      assert.deepEqual(await getJson(node, `/api/presence/stats?topic=${encodeURIComponent(TOPIC)}`), expected);
    }
  };
  await counts({ connections: 6, users: 4 });
  await until("occupancy pushes carry connections 6 and users 4", () =>
    everyone.every((m) => {
      const last = m.occupancy[m.occupancy.length - 1];
      return last && last.p.topic === TOPIC && last.p.connections === 6 && last.p.users === 4;
    }));

  // Cross-node joins and leaves: from the join (or leave) being sent until
  // the other nodes' members' list() shows it, measured at their onSync.
  const nodes = [n1, n2, n3];
  const observers = [[a1, bob], [a2, dave], [a3, carol]];
  const joins = [];
  const leaves = [];
  for (let i = 0; i < 6; i++) {
    const at = i % 3;
    const key = `probe${i}`;
    const socket = await connect(t, nodes[at]);
    const channel = socket.channel(TOPIC, { user_id: key });
    const others = observers.filter((_, j) => j !== at).flat();
    let seen = others.map((m) => whenSynced(m, hasKey(key), `${key} joined on ${nodes[at].node}`));
    const joinAt = Date.now();
    await reply(channel.join(TIMEOUT));
    joins.push(Math.max(...(await Promise.all(seen))) - joinAt);
    seen = others.map((m) => whenSynced(m, lacksKey(key), `${key} left ${nodes[at].node}`));
    const leaveAt = Date.now();
    channel.leave(TIMEOUT);
    leaves.push(Math.max(...(await Promise.all(seen))) - leaveAt);
    await sleep(50 + 37 * i);
  }
  console.log(`# cross-node presence: joins seen after ${ms(joins)}; leaves after ${ms(leaves)}`);
  assert.ok(Math.max(...joins) <= CROSS_NODE_MS, `a cross-node join took ${Math.max(...joins)} ms (> ${CROSS_NODE_MS})`);
  assert.ok(Math.max(...leaves) <= CROSS_NODE_MS, `a cross-node leave took ${Math.max(...leaves)} ms (> ${CROSS_NODE_MS})`);
  await converge(everyone, { alice: 3, bob: 1, carol: 1, dave: 1 }, "the probes are gone");

  // SIGKILL n3: its metas (alice's third tab, carol) leave within the TTL.
  const survivors = [a1, bob, a2, dave];
  let gone = survivors.map((m) => whenSynced(m, noMetaOf("n3"), "n3's metas left after SIGKILL", NODE_TTL_MS + 5000));
  const killedAt = Date.now();
  await stopNode(n3, "SIGKILL");
  const afterKill = Math.max(...(await Promise.all(gone))) - killedAt;
  console.log(`# SIGKILLed node's metas left after ${afterKill} ms (--node-ttl-ms ${NODE_TTL_MS})`);
  assert.ok(afterKill <= NODE_TTL_MS + 600, `the killed node's metas took ${afterKill} ms to leave`);
  await converge(survivors, { alice: 2, bob: 1, dave: 1 }, "after n3 was killed");
  await counts({ connections: 4, users: 3 });

  // SIGTERM n2: its metas leave at once (a goodbye, not the TTL).
  const remaining = [a1, bob];
  gone = remaining.map((m) => whenSynced(m, noMetaOf("n2"), "n2's metas left after SIGTERM", NODE_TTL_MS + 5000));
  const stoppedAt = Date.now();
  const stopped = stopNode(n2, "SIGTERM");
  const afterStop = Math.max(...(await Promise.all(gone))) - stoppedAt;
  await stopped;
  console.log(`# SIGTERMed node's metas left after ${afterStop} ms`);
  assert.ok(afterStop <= NODE_TTL_MS / 2, `the stopped node's metas took ${afterStop} ms to leave (TTL ${NODE_TTL_MS})`);
  await converge(remaining, { alice: 1, bob: 1 }, "after n2 stopped");
  await counts({ connections: 2, users: 2 });
});

test("a Redis outage: local-only while it is down, then everyone converges with nothing duplicated or lost", async (t) => {
  const redis = await startRedis(t);
  const [na, nb] = await startCluster(t, redis, ["na", "nb"]);
  const a1 = await member(t, na, { user_id: "alice" });
  const bob = await member(t, na, { user_id: "bob" });
  const a2 = await member(t, nb, { user_id: "alice" });
  const carol = await member(t, nb, { user_id: "carol" });
  await converge([a1, bob, a2, carol], { alice: 2, bob: 1, carol: 1 }, "before the outage");
  const refsBefore = refs(a1);

  const downAt = Date.now();
  await redis.kill();
  await converge([a1, bob], { alice: 1, bob: 1 }, "node A local-only while redis is down");
  await converge([a2, carol], { alice: 1, carol: 1 }, "node B local-only while redis is down");
  const localOnly = Date.now() - downAt;
  assert.ok([a1, bob].every((m) => noMetaOf("nb")(m)) && [a2, carol].every((m) => noMetaOf("na")(m)));

  // Changes during the outage: dave joins B, bob leaves A.
  const dave = await member(t, nb, { user_id: "dave" });
  await reply(bob.channel.leave(TIMEOUT));
  await converge([a2, carol, dave], { alice: 1, carol: 1, dave: 1 }, "dave joined B during the outage");
  await converge([a1], { alice: 1 }, "bob left A during the outage");
  // Longer than --node-ttl-ms: the nodes drop each other meanwhile.
  await sleep(Math.max(0, downAt + NODE_TTL_MS + 500 - Date.now()));
  await converge([a1], { alice: 1 }, "A alone after a TTL");
  await converge([a2, carol, dave], { alice: 1, carol: 1, dave: 1 }, "B alone after a TTL");

  const upAt = Date.now();
  await redis.restart();
  const all = [a1, a2, carol, dave];
  await converge(all, { alice: 2, carol: 1, dave: 1 }, "after redis came back");
  const restored = Date.now() - upAt;
  console.log(`# redis outage: local-only after ${localOnly} ms; converged ${restored} ms after redis restarted`);
  const survivors = refsBefore.filter((r) => !r.startsWith("bob/"));
  for (const r of survivors) assert.ok(refs(a1).includes(r), `${r} kept its phx_ref through the outage`);
  assert.equal(refs(a1).length, 4);
  // And it stays that way (no late duplicate or stale meta).
  await sleep(1000);
  await converge(all, { alice: 2, carol: 1, dave: 1 }, "a second later");
});

test("count-only above --presence-max-members: {} and no diffs, occupancy with users; full presence again below 90 %", async (t) => {
  const server = await startServer(t, ["--presence-max-members", "5"]);
  const members = [];
  for (let i = 1; i <= 5; i++) members.push(await member(t, server, { user_id: `u${i}` }));
  await converge(members, { u1: 1, u2: 1, u3: 1, u4: 1, u5: 1 }, "five members: full presence");

  members.push(await member(t, server, { user_id: "u6" }));
  // Six > 5: every member gets presence_state {} (phoenix.js lists nobody).
  await until("every member got presence_state {}", () =>
    members.every((m) => m.states.length > 0 && JSON.stringify(m.states[m.states.length - 1].p) === "{}"));
  await converge(members, {}, "count-only lists are empty");
  const countOnlyAt = Date.now();
  // ... and, instead of the diff of the join that crossed the limit, the figures.
  await until("members get occupancy with users 6", () =>
    members.every((m) => m.occupancy.some((o) => o.p.topic === TOPIC && o.p.users === 6 && o.p.connections === 6)), 2000);

  // A joiner now gets {} at once, an occupancy push with users, and no diffs.
  const u7 = await member(t, server, { user_id: "u7" });
  members.push(u7);
  await until("the joiner's presence_state", () => u7.states.length > 0);
  assert.deepEqual(u7.states[0].p, {});
  await until("members get occupancy with users 7", () =>
    members.every((m) => m.occupancy.some((o) => o.p.topic === TOPIC && o.p.users === 7 && o.p.connections === 7)));
  // A second tab of u7: connections 8, users still 7.
  const u7b = await member(t, server, { user_id: "u7" });
  members.push(u7b);
  await until("occupancy counts u7 once", () =>
    members.every((m) => m.occupancy.some((o) => o.p.users === 7 && o.p.connections === 8)));
  await reply(u7b.channel.leave(TIMEOUT));
  members.pop();
  await reply(members.pop().channel.leave(TIMEOUT)); // u7
  await until("occupancy back to 6", () => members.every((m) => m.occupancy.some((o) => o.p.users === 6 && o.p.connections === 6)));
  assert.deepEqual(members.flatMap((m) => m.diffs.filter((d) => d.at >= countOnlyAt).map((d) => d.p)), [], "no presence_diff while count-only");

  // 6 → 5: still count-only (5 is not below 4.5).
  await reply(members.pop().channel.leave(TIMEOUT)); // u6
  await until("occupancy shows 5", () => members.every((m) => m.occupancy.some((o) => o.p.users === 5)));
  const statesAt5 = members.map((m) => m.states.length);
  await sleep(300);
  assert.deepEqual(members.map((m) => m.states.length), statesAt5, "no fresh state at 5 of 5");
  assert.deepEqual(members.flatMap((m) => m.diffs.filter((d) => d.at >= countOnlyAt).map((d) => d.p)), [], "no presence_diff at 5 of 5");

  // 5 → 4 (< 90 % of 5): a fresh full presence_state to every member.
  await reply(members.pop().channel.leave(TIMEOUT)); // u5
  await until("a fresh presence_state with four members to each", () =>
    members.every((m, i) => m.states.length > statesAt5[i] && Object.keys(m.states[m.states.length - 1].p).length === 4));
  await converge(members, { u1: 1, u2: 1, u3: 1, u4: 1 }, "full presence again");
  // Diffs resume.
  const diffsBefore = members.map((m) => m.diffs.length);
  const u8 = await member(t, server, { user_id: "u8" });
  await converge([...members, u8], { u1: 1, u2: 1, u3: 1, u4: 1, u8: 1 }, "u8 joined");
  assert.ok(members.every((m, i) => m.diffs.length > diffsBefore[i]), "u8 arrived by presence_diff");
});

test("meta: an object of at most 1 KiB under \"meta\"; larger or not an object → meta too large, nothing counted", async (t) => {
  const server = await startServer(t);
  const observer = await member(t, server, { user_id: "obs" });
  // {"x":"…"} is 8 bytes plus the string: 1016 characters make 1024 bytes.
  const fits = { x: "a".repeat(1016) };
  assert.equal(JSON.stringify(fits).length, 1024);
  const nested = { status: "away", tags: ["a", "b"], n: 1.5, deep: { ok: true } };
  const ok1 = await member(t, server, { user_id: "fits", meta: fits });
  const ok2 = await member(t, server, { user_id: "nested", meta: nested });
  await converge([observer, ok1, ok2], { fits: 1, nested: 1, obs: 1 }, "both metas accepted");
  const byKey = Object.fromEntries(metas(observer));
  assert.deepEqual(byKey.fits.meta, fits);
  assert.deepEqual(byKey.nested.meta, nested);

  const socket = await connect(t, server);
  const refusals = [
    { x: "a".repeat(1017) },
    { x: "a".repeat(5000) },
    "away",
    ["a"],
    5,
    true,
  ];
  for (const meta of refusals) {
    const channel = socket.channel(TOPIC, { user_id: "refused", meta });
    const err = await errorReply(channel.join(TIMEOUT));
    assert.deepEqual(err, { reason: "meta too large" }, `meta ${JSON.stringify(meta).slice(0, 40)}`);
    channel.leave(TIMEOUT);
  }
  assert.deepEqual(await getJson(server, `/api/presence/stats?topic=${encodeURIComponent(TOPIC)}`), { connections: 3, users: 3 });
  const stats = await getJson(server, "/api/stats");
  assert.equal(stats.connection_count, 3, "refused joins are not counted");
  assert.equal(stats.socket_count, 4);
  await sleep(200);
  assert.deepEqual(view(observer), { fits: 1, nested: 1, obs: 1 }, "nothing refused shows up");
});

test("Chromium: phoenix.js Presence in two tabs of one user, one key with two metas; a closed tab leaves", async (t) => {
  const { chromium } = require("playwright-core");
  const CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
  ];
  const PHOENIX_JS = fs.readFileSync(path.join(__dirname, "node_modules", "phoenix", "priv", "static", "phoenix.min.js"));
  const PAGE = `<!doctype html><meta charset="utf-8"><title>presence</title>
<script src="/phoenix.js"></script>
<script>
  window.view = null;
  window.start = (wsBase, topic, userId, device) => {
    const socket = new Phoenix.Socket(wsBase + "/socket", {});
    socket.connect();
    const channel = socket.channel(topic, {user_id: userId, meta: {device}});
    const presence = new Phoenix.Presence(channel);
    presence.onSync(() => {
      window.view = presence.list((key, {metas}) => ({key, metas}));
    });
    channel.join().receive("error", (e) => { window.joinError = e; });
  };
</script>`;
  const pages = http.createServer((req, res) => {
    if (req.url === "/phoenix.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(PHOENIX_JS);
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
    }
  });
  await new Promise((r) => pages.listen(0, "127.0.0.1", r));
  t.after(() => pages.close());
  const profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "headcount-chromium-"));
  const browser = await chromium.launchPersistentContext(profileDir, { executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  t.after(async () => {
    await browser.close();
    fs.rmSync(profileDir, { recursive: true, force: true });
  });

  const server = await startServer(t);
  const wsBase = server.base.replace(/^http/, "ws");
  const tab = async (device) => {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${pages.address().port}/`);
    await page.evaluate(([ws, topic, device]) => window.start(ws, topic, "alice", device), [wsBase, TOPIC, device]);
    return page;
  };
  const tab1 = await tab("tab1");
  const tab2 = await tab("tab2");
  const pageView = (page) => page.evaluate(() => window.view);
  const summary = (v) => (v || []).map(({ key, metas: ms }) => `${key}:${ms.map((m) => m.meta.device).sort().join("+")}`);
  for (const page of [tab1, tab2]) {
    await until("each tab lists alice with two metas", async () => JSON.stringify(summary(await pageView(page))) === JSON.stringify(["alice:tab1+tab2"]));
  }
  const v = await pageView(tab1);
  assert.equal(v.length, 1);
  const [m1, m2] = v[0].metas;
  assert.notEqual(m1.phx_ref, m2.phx_ref);
  for (const meta of v[0].metas) assertMeta(meta, server.node, Date.now() - 60000, "browser tab");
  assert.deepEqual(await getJson(server, `/api/presence/stats?topic=${encodeURIComponent(TOPIC)}`), { connections: 2, users: 1 });

  await tab1.close();
  await until("the other tab lists alice with one meta", async () => JSON.stringify(summary(await pageView(tab2))) === JSON.stringify(["alice:tab2"]));
  await until("the server counts one", async () =>
    JSON.stringify(await getJson(server, `/api/presence/stats?topic=${encodeURIComponent(TOPIC)}`)) === JSON.stringify({ connections: 1, users: 1 }));
});
