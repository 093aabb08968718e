// A remote-controlled official socket.io-client, for plugbus's pytest interop tests.
//
// Usage: node driver.mjs URL
// Reads commands as JSON lines on stdin and writes what happens as JSON lines on stdout.
// Binary data crosses as {"$binary": "<base64>"} in both directions.
//
// Commands:
//   {"cmd": "connect", "opts": {...io() options..., "namespace": "/ns" (optional)}}
//   {"cmd": "emit", "event": E, "args": [...], "ack": true|false, "id": N}
//   {"cmd": "transport"}            -> {"type": "transport", "name": "polling"|"websocket"}
//   {"cmd": "disconnect"}
//   {"cmd": "destroy"}              drop the TCP socket under the websocket, as a dead network does
//                                   (no close frame; the client reconnects)
// Output lines: {"type": "open", "transport"} (engine handshake),
//   {"type": "connect", "sid", "transport", "recovered"} (recovered: socket.recovered),
//   {"type": "connect_error", "message", "data"},
//   {"type": "disconnect", "reason"}, {"type": "reconnect", "attempt"}, {"type": "upgrade", "name"},
//   {"type": "event", "event", "args"}, {"type": "ack", "id", "args"}, {"type": "fatal", "message"}.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const url = process.argv[2];
let socket = null;

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function encode(value) {
  if (Buffer.isBuffer(value) || value instanceof ArrayBuffer) {
    return { $binary: Buffer.from(value).toString("base64") };
  }
  if (Array.isArray(value)) return value.map(encode);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encode(v)]));
  }
  return value;
}

function decode(value) {
  if (Array.isArray(value)) return value.map(decode);
  if (value && typeof value === "object") {
    if (typeof value.$binary === "string") return Buffer.from(value.$binary, "base64");
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, decode(v)]));
  }
  return value;
}

function connect({ namespace = "", ...opts }) {
  socket = io(url + namespace, { reconnectionDelay: 200, reconnectionDelayMax: 500, ...opts });
  socket.on("connect", () =>
    out({ type: "connect", sid: socket.id, transport: socket.io.engine.transport.name, recovered: socket.recovered }),
  );
  socket.on("connect_error", (err) => out({ type: "connect_error", message: err.message, data: err.data ?? null }));
  socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
  socket.io.on("reconnect", (attempt) => out({ type: "reconnect", attempt }));
  // A new engine is made on every (re)connection; watch each one for its transport upgrade.
  socket.io.on("open", () => {
    out({ type: "open", transport: socket.io.engine.transport.name });
    socket.io.engine.on("upgrade", (t) => out({ type: "upgrade", name: t.name }));
  });
  socket.onAny((event, ...args) => out({ type: "event", event, args: encode(args) }));
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    out({ type: "fatal", message: `bad command: ${e.message}` });
    return;
  }
  switch (msg.cmd) {
    case "connect":
      connect(msg.opts ?? {});
      break;
    case "emit": {
      const args = decode(msg.args ?? []);
      if (msg.ack) {
        socket.timeout(5000).emit(msg.event, ...args, (err, ...reply) => {
          out(err ? { type: "ack", id: msg.id, timeout: true } : { type: "ack", id: msg.id, args: encode(reply) });
        });
      } else {
        socket.emit(msg.event, ...args);
      }
      break;
    }
    case "transport":
      out({ type: "transport", name: socket.io.engine.transport.name });
      break;
    case "disconnect":
      socket.disconnect();
      break;
    case "destroy": {
      // the ws library's net.Socket: destroyed without a close frame
      const ws = socket.io.engine.transport.ws;
      (ws?._socket ?? null)?.destroy();
      out({ type: "destroyed", had_socket: Boolean(ws?._socket) });
      break;
    }
    default:
      out({ type: "fatal", message: `unknown command ${msg.cmd}` });
  }
});
rl.on("close", () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
