// Starting and stopping the real `headcount` binary for the Node tests:
// HEADCOUNT_BIN must point at it (the tests fail loudly otherwise).
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");

const BIN = process.env.HEADCOUNT_BIN;
if (!BIN) {
  throw new Error("HEADCOUNT_BIN is not set: export HEADCOUNT_BIN=$PWD/target/debug/headcount");
}
if (!fs.existsSync(BIN)) {
  throw new Error(`HEADCOUNT_BIN=${BIN} does not exist: run cargo build --bins first`);
}

/**
 * Starts `headcount serve --bind <bind> ...args` with no HEADCOUNT_* variables
 * from the environment; resolves once the start line is read, with
 * { proc, host, port, addr, node, base: "http://…", url: "ws://…/socket" }.
 */
function startServer({ args = [], bind = "127.0.0.1:0", timeoutMs = 10000 } = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("HEADCOUNT_")) env[k] = v;
  }
  env.RUST_LOG = "warn";
  const proc = spawn(BIN, ["serve", "--bind", bind, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`no start line within ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited ${code} before listening; stderr:\n${stderr}`));
    });
    proc.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/^headcount listening on (\S+):(\d+) node (\S+)\n/);
      if (m) {
        clearTimeout(timer);
        const addr = `${m[1]}:${m[2]}`;
        resolve({
          proc, host: m[1], port: Number(m[2]), addr, node: m[3],
          base: `http://${addr}`, url: `ws://${addr}/socket`,
        });
      }
    });
  });
}

/** SIGTERM, then wait for the exit (SIGKILL after 10 s). */
function stopServer(server) {
  const { proc } = server;
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill("SIGKILL"), 10000);
    proc.once("exit", () => { clearTimeout(timer); resolve(); });
    proc.kill("SIGTERM");
  });
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether a Redis on `port` answers PING within `ms`. */
function redisPing(port, ms = 500) {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    const done = (ok) => { clearTimeout(timer); sock.destroy(); resolve(ok); };
    const timer = setTimeout(() => done(false), ms);
    let got = "";
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => { got += d; if (got.includes("\r\n")) done(got.startsWith("+PONG")); });
    sock.on("error", () => done(false));
  });
}

/**
 * Starts a throw-away `redis-server` (no persistence) on a free port; resolves
 * with { port, url, kill(), restart(), stop() }: `kill` is SIGKILL (Redis
 * vanishes with everything it held), `restart` starts it again, empty, on the
 * same port. Fails loudly when redis-server is missing.
 */
async function startRedis({ timeoutMs = 10000 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "headcount-redis-"));
  const redis = { port: 0, proc: null, url: "" };
  const spawnOnce = async () => {
    const proc = spawn("redis-server", [
      "--port", String(redis.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
    ], { stdio: "ignore" });
    let failed = null;
    proc.on("error", (e) => (failed = e));
    proc.on("exit", (code) => (failed = failed || new Error(`redis-server exited ${code}`)));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !failed) {
      if (await redisPing(redis.port)) {
        redis.proc = proc;
        return true;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    proc.kill("SIGKILL");
    if (failed && failed.code === "ENOENT") throw new Error("redis-server is not installed (apt-get install redis-server)");
    return false;
  };
  redis.kill = () => new Promise((resolve) => {
    const proc = redis.proc;
    redis.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once("exit", () => resolve());
    proc.kill("SIGKILL");
  });
  redis.restart = async () => {
    await redis.kill();
    if (!(await spawnOnce())) throw new Error(`redis-server did not restart on ${redis.port}`);
  };
  redis.stop = async () => {
    await redis.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; i < 5; i++) {
    redis.port = await freePort();
    redis.url = `redis://127.0.0.1:${redis.port}`;
    if (await spawnOnce()) return redis;
  }
  throw new Error("could not start redis-server");
}

module.exports = { BIN, startServer, stopServer, startRedis, freePort };
