// MODAL_SERVER_URL=... MODAL_TOKEN_ID=... MODAL_TOKEN_SECRET=... node bench/modal_sdk.mjs [N [BYTES]]
// The official Modal JS SDK's side of bench/modal.sh (modal@0.7.2, read from
// $RUNBOX_TEST_MODAL_JS_DIR, default /opt/runbox-test/modal-js): N sandboxes at once (default
// 100, Promise.all), each: create, one exec streaming BYTES of stdout (default 1 MiB) read chunk
// by chunk and counted (binary mode: no text decoding, the SDK's cheapest way to read), the
// exec's exit, terminate. Prints one JSON line with the same fields as bench/modal_runbox.lua:
// this process's own CPU time (process.cpuUsage(): user + system of this process, all its
// threads; the stand-in server and the sandboxes are other processes), its peak resident memory
// (VmHWM of /proc/self/status), the wall time of the N sandboxes, and the outcome.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.RUNBOX_TEST_MODAL_JS_DIR || "/opt/runbox-test/modal-js";
const { ModalClient } = await import(
  pathToFileURL(path.join(dir, "node_modules/modal/dist/index.js")).href
);

const N = Number(process.argv[2] || 100);
const BYTES = Number(process.argv[3] || 1048576);
const CMD = ["sh", "-c", `head -c ${BYTES} /dev/zero | tr '\\0' x`];

function peakRssMb() {
  const m = fs.readFileSync("/proc/self/status", "utf8").match(/\nVmHWM:\s+(\d+) kB/);
  return Number(m[1]) / 1024;
}

// when each step ended, seconds after the start, per sandbox: the timeline in the output
const STEPS = ["created", "exec_started", "first_byte", "read_all", "exited", "terminated"];
const stamps = Object.fromEntries(STEPS.map((k) => [k, []]));
let T0 = 0;
const stamp = (k) => stamps[k].push((performance.now() - T0) / 1000);

async function one(modal, app, image) {
  const sb = await modal.sandboxes.create(app, image);
  stamp("created");
  try {
    const p = await sb.exec(CMD, { mode: "binary" });
    stamp("exec_started");
    const reader = p.stdout.getReader();
    let n = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (n === 0) stamp("first_byte");
      n += value.length;
    }
    stamp("read_all");
    const code = await p.wait();
    stamp("exited");
    if (n !== BYTES) throw new Error(`read ${n} bytes, expected ${BYTES}`);
    if (code !== 0) throw new Error(`exec ended with ${code}`);
    return n;
  } finally {
    await sb.terminate();
    stamp("terminated");
  }
}

const modal = new ModalClient();
const app = await modal.apps.fromName("bench-modal", { createIfMissing: true });
const image = modal.images.fromRegistry("debian:bookworm-slim");
await image.build(app); // built once, before the clock

const c0 = process.cpuUsage();
const t0 = performance.now();
T0 = t0;
const results = await Promise.allSettled(Array.from({ length: N }, () => one(modal, app, image)));
const wall = (performance.now() - t0) / 1000;
const c1 = process.cpuUsage();

const failures = results.filter((r) => r.status === "rejected").map((r) => String(r.reason));
const bytes = results.reduce((s, r) => s + (r.status === "fulfilled" ? r.value : 0), 0);
const out = {
  side: "sdk", sandboxes: N, ok: N - failures.length, bytes, wall_s: wall,
  cpu_ms: (c1.user + c1.system) / 1000, user_ms: c1.user / 1000, sys_ms: c1.system / 1000, // the whole process
  phase_cpu_ms: (c1.user + c1.system - c0.user - c0.system) / 1000, // the N sandboxes alone
  peak_rss_mb: peakRssMb(), failures: failures.slice(0, 3),
};
const median = (v) => {
  v.sort((a, b) => a - b);
  const n = v.length;
  return n === 0 ? null : n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
};
out.timeline_s = Object.fromEntries(STEPS.map((k) => [k, { median: median(stamps[k]), last: stamps[k].at(-1) }]));
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(failures.length === 0 ? 0 : 1); // the SDK keeps its channels open
