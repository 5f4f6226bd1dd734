// Starting and stopping the real `headcount` binary for the Node tests:
// HEADCOUNT_BIN must point at it (the tests fail loudly otherwise).
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");

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

module.exports = { BIN, startServer, stopServer };
