// The Node reference server of plugbus's benchmark: socket.io 4.8 doing the work plugbus's
// default plugins do, so that bench/ can compare the two (and the bare python-socketio
// baseline, bench/servers/bare_socketio.py) side by side.
//
//   node server.js --port 3000 [--host 127.0.0.1]
//
// Socket.IO (namespace "/", path /socket.io/, both transports):
//   on connect            -> "welcome" "Welcome to server"            (plugbus's welcome plugin)
//   "join-room" {room}    -> joins; ack {ok: true, data: {room, rooms}}  (rooms plugin)
//   "send-message" {message, roomID}
//                         -> io.to(roomID).emit("receive-message", message);
//                            ack {ok: true, data: {id, room, recipients}} (relay plugin)
// A payload that is not {room: string} / {message: string|object|array, roomID: string} is
// refused with {ok: false, error: {code, message, details}} in the ack (or an "error" event).
// HTTP (node's http module, beside socket.io on the same port):
//   POST /rooms/:room/messages {"message"} -> same delivery; 200 {id, room, recipients}
//   GET  /health                            -> 200 {status: "ok", connections}
"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "3000"));
const host = arg("host", "127.0.0.1");
const GREETING = "Welcome to server";
const MAX_LENGTH = 2000; // the moderation plugin's default max_length

function refusal(code, message, details) {
  return { ok: false, error: { code, message, details: details || {} } };
}

function isMessage(m) {
  return typeof m === "string" || (m !== null && typeof m === "object");
}

function deliver(room, message) {
  const recipients = io.sockets.adapter.rooms.get(room)?.size ?? 0;
  io.to(room).emit("receive-message", message);
  return { id: crypto.randomUUID().replace(/-/g, ""), room, recipients };
}

function checkMessage(payload) {
  if (payload === null || typeof payload !== "object" || !isMessage(payload.message)
      || typeof payload.roomID !== "string" || payload.roomID.length === 0) {
    return refusal("invalid_payload", "send-message needs {message, roomID}");
  }
  if (typeof payload.message === "string" && payload.message.length > MAX_LENGTH) {
    return refusal("message_rejected", "message too long", { max_length: MAX_LENGTH });
  }
  return null;
}

function answer(socket, ack, reply) {
  if (typeof ack === "function") ack(reply);
  else if (!reply.ok) socket.emit("error", reply.error);
}

const httpServer = http.createServer((req, res) => {
  const send = (status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  if (req.method === "GET" && req.url === "/health") {
    send(200, { status: "ok", server: "node-socket.io", connections: io.engine.clientsCount });
    return;
  }
  const m = /^\/rooms\/([^/?]+)\/messages$/.exec(req.url || "");
  if (req.method !== "POST" || !m) {
    send(404, { code: "not_found", message: "not found", details: {} });
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      send(422, { code: "invalid_payload", message: "body is not JSON", details: {} });
      return;
    }
    const room = decodeURIComponent(m[1]);
    const problem = checkMessage({ message: body && body.message, roomID: room });
    if (problem) {
      send(422, problem.error);
      return;
    }
    send(200, deliver(room, body.message));
  });
});

const io = new Server(httpServer, { cors: { origin: "*", credentials: true } });

io.on("connection", (socket) => {
  socket.emit("welcome", GREETING);

  socket.on("join-room", (payload, ack) => {
    if (payload === null || typeof payload !== "object" || typeof payload.room !== "string"
        || payload.room.length === 0) {
      answer(socket, ack, refusal("invalid_payload", "join-room needs {room}"));
      return;
    }
    socket.join(payload.room);
    const rooms = [...socket.rooms].filter((r) => r !== socket.id);
    answer(socket, ack, { ok: true, data: { room: payload.room, rooms } });
  });

  socket.on("send-message", (payload, ack) => {
    const problem = checkMessage(payload);
    if (problem) {
      answer(socket, ack, problem);
      return;
    }
    answer(socket, ack, { ok: true, data: deliver(payload.roomID, payload.message) });
  });
});

httpServer.listen(port, host, () => {
  console.log(`node socket.io ${require("socket.io/package.json").version} on http://${host}:${port}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
