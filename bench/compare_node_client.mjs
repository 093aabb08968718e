// A one-off comparison for choosing the load generator (not part of bench/run.sh):
// the same closed-loop fan-out saturation as `bench/loadgen.py fanout`, driven by the official
// socket.io-client in Node, reporting its own CPU per delivery.
//
//   node bench/compare_node_client.mjs URL CLIENTS SECONDS
//
// It imports socket.io-client from tests/interop/node_modules (scripts/test.sh installs it).
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tests", "interop", "package.json"));
const { io } = require("socket.io-client");

const [url, clientsArg, secondsArg] = process.argv.slice(2);
const C = Number(clientsArg || 100);
const SECONDS = Number(secondsArg || 5);
const WINDOW = Math.max(2, Math.floor(4000 / C));

function connect() {
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
    s.once("connect", () => resolve(s));
    s.once("connect_error", reject);
  });
}

const counts = new Map();
let total = 0;
let doneUpto = 0;
let wake = null;

const sockets = [];
for (let i = 0; i < C; i += 100) {
  const batch = await Promise.all(Array.from({ length: Math.min(100, C - i) }, connect));
  await Promise.all(batch.map((s) => s.emitWithAck("join-room", { room: "bench" })));
  sockets.push(...batch);
}
for (const s of sockets) {
  s.on("receive-message", (text) => {
    const seq = Number(text.slice(0, text.indexOf(" ")));
    const n = (counts.get(seq) || 0) + 1;
    total += 1;
    if (n === C) {
      counts.delete(seq);
      if (seq >= doneUpto) doneUpto = seq + 1;
      if (wake) { const w = wake; wake = null; w(); }
    } else counts.set(seq, n);
  });
}
const pub = await connect();
let seq = 0;
async function saturate(ms) {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    while (seq - doneUpto < WINDOW) {
      pub.emit("send-message", { message: `${seq} ${performance.now()}`, roomID: "bench" });
      seq += 1;
    }
    await new Promise((r) => { wake = r; });
  }
}
await saturate(1000);
const t0 = performance.now();
const d0 = total;
const c0 = process.cpuUsage();
await saturate(SECONDS * 1000);
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(c0);
const delivered = total - d0;
const cpuS = (cpu.user + cpu.system) / 1e6;
console.log(JSON.stringify({
  generator: "node socket.io-client", clients: C, deliveries_per_s: Math.round(delivered / wall),
  gen_cpu: +(cpuS / wall).toFixed(3), gen_cpu_us_per_delivery: +((cpuS / delivered) * 1e6).toFixed(2),
}));
for (const s of sockets) s.close();
pub.close();
process.exit(0);
