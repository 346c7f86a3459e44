// cubeflash node runtime: serves a handler's handle(req) over HTTP/1.1 on $PORT.
//
// Standard library only. The handler is named by CUBEFLASH_HANDLER as "file.js" or
// "file.js:export" (default export: handle, else module.exports itself when it is a
// function), relative to the working directory; .mjs files are loaded as ES modules.
// GET /_/ready answers 200 once the handler is loaded; GET /_/health while the process serves.
// The result may be a string, a Buffer, a JSON-able value, or an object
// { statusCode, headers, body } as in AWS Lambda. A thrown error or rejected promise becomes
// a 500 with a JSON body; the process keeps serving.
"use strict";

const http = require("http");
const path = require("path");
const { pathToFileURL } = require("url");
const { AsyncLocalStorage } = require("async_hooks");

// The call being served: each line the handler writes to stdout or stderr starts with
// "[call ID] ", so the gateway's logs can show one call's lines under concurrency.
const CALL = new AsyncLocalStorage();
for (const stream of [process.stdout, process.stderr]) {
  const write = stream.write.bind(stream);
  stream.write = (chunk, ...rest) => {
    const call = CALL.getStore();
    if (call === undefined || typeof chunk !== "string" || chunk === "") return write(chunk, ...rest);
    const tagged = chunk.replace(/^(?=.)/gm, `[call ${call}] `);
    return write(tagged, ...rest);
  };
}

let FUNCTION = process.env.CUBEFLASH_FUNCTION || "function";
const RESPONSE_KEYS = new Set(["statusCode", "headers", "body", "isBase64Encoded"]);

async function loadHandler(spec) {
  const colon = spec.lastIndexOf(":");
  const file = colon > 0 ? spec.slice(0, colon) : spec;
  const name = colon > 0 ? spec.slice(colon + 1) : "handle";
  const full = path.resolve(file);
  const mod = full.endsWith(".mjs") ? await import(pathToFileURL(full).href) : require(full);
  let fn = mod && mod[name];
  if (typeof fn !== "function" && name === "handle") {
    fn = typeof mod === "function" ? mod : mod && mod.default;
  }
  if (typeof fn !== "function") {
    throw new Error(`${file} exports no function ${name}(req)`);
  }
  return fn;
}

function encodeBody(value) {
  if (value === undefined || value === null) return [null, Buffer.alloc(0)];
  if (Buffer.isBuffer(value)) return ["application/octet-stream", value];
  if (value instanceof Uint8Array) return ["application/octet-stream", Buffer.from(value)];
  if (typeof value === "string") return ["text/plain; charset=utf-8", Buffer.from(value, "utf8")];
  return ["application/json", Buffer.from(JSON.stringify(value), "utf8")];
}

function isResponse(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    !Array.isArray(value) &&
    Number.isInteger(value.statusCode) &&
    Object.keys(value).every((k) => RESPONSE_KEYS.has(k))
  );
}

function toResponse(result) {
  let status = 200;
  let headers = {};
  let value = result;
  if (isResponse(result)) {
    status = result.statusCode;
    headers = { ...(result.headers || {}) };
    value = result.isBase64Encoded ? Buffer.from(result.body || "", "base64") : result.body;
  }
  const [contentType, body] = encodeBody(value);
  if ((value === undefined || value === null) && status === 200) status = 204;
  if (contentType && !Object.keys(headers).some((k) => k.toLowerCase() === "content-type")) {
    headers["Content-Type"] = contentType;
  }
  return [status, headers, body];
}

function send(res, status, headers, body, head) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) {
    const lower = k.toLowerCase();
    if (lower !== "content-length" && lower !== "connection" && lower !== "transfer-encoding") out[k] = String(v);
  }
  out["Content-Length"] = String(body.length);
  res.writeHead(status, out);
  res.end(head ? undefined : body);
}

function sendJson(res, status, value) {
  send(res, status, { "Content-Type": "application/json" }, Buffer.from(JSON.stringify(value)), false);
}

function makeRequest(req, body) {
  const url = new URL(req.url, "http://localhost");
  const query = {};
  const queryAll = {};
  for (const [k, v] of url.searchParams) {
    query[k] = v;
    (queryAll[k] = queryAll[k] || []).push(v);
  }
  return {
    method: req.method,
    path: url.pathname,
    query,
    queryAll,
    headers: req.headers,
    body,
    text() {
      return body.toString("utf8");
    },
    json() {
      return body.length ? JSON.parse(body.toString("utf8")) : null;
    },
  };
}

// Warm-pool mode (--pool): node and the shim are loaded; wait for the gateway to name the
// function to become: one JSON line with dir, env and port.
function waitForFunction() {
  return new Promise((resolve) => {
    let buffered = "";
    const onData = (chunk) => {
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) return;
      // From here on stdin is only the lifeline (see watchLifeline).
      process.stdin.off("data", onData);
      process.stdin.off("end", onEnd);
      const job = JSON.parse(buffered.slice(0, newline));
      process.chdir(job.dir);
      Object.assign(process.env, job.env);
      resolve();
    };
    // Closed before a job came: the gateway is gone.
    const onEnd = () => process.exit(0);
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", onData);
    process.stdin.on("end", onEnd);
  });
}

// The gateway holds the other end of our stdin (CUBEFLASH_LIFELINE=stdin): when it closes,
// the gateway is gone, however it died, and this replica and all it started go too.
function watchLifeline() {
  if (process.env.CUBEFLASH_LIFELINE !== "stdin") return;
  const gone = () => {
    try {
      process.kill(-process.pid, "SIGKILL");
    } finally {
      process.exit(1);
    }
  };
  process.stdin.on("data", () => {});
  process.stdin.on("end", gone);
  process.stdin.on("error", gone);
  process.stdin.resume();
  // The lifeline alone does not keep the replica alive after a graceful stop.
  if (typeof process.stdin.unref === "function") process.stdin.unref();
}

async function main() {
  if (process.argv[2] === "--pool") {
    await waitForFunction();
    process.argv.splice(2, 1);
  }
  watchLifeline();
  const spec = process.env.CUBEFLASH_HANDLER || process.argv[2];
  if (!spec) {
    console.error("cubeflash: set CUBEFLASH_HANDLER to the handler file, e.g. handler.js");
    process.exit(1);
  }
  FUNCTION = process.env.CUBEFLASH_FUNCTION || FUNCTION;
  const handle = await loadHandler(spec);
  let inflight = 0;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const request = makeRequest(req, Buffer.concat(chunks));
      if ((request.path === "/_/ready" || request.path === "/_/health") && req.method === "GET") {
        return sendJson(res, 200, { status: "ok" });
      }
      inflight++;
      const call = request.headers["x-cubeflash-call-id"];
      try {
        const result = call === undefined ? handle(request) : CALL.run(String(call), () => handle(request));
        const [status, headers, body] = toResponse(await result);
        send(res, status, headers, body, req.method === "HEAD");
      } catch (err) {
        const line = userStack(err);
        if (call === undefined) console.error(line);
        else CALL.run(String(call), () => console.error(line));
        const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        sendJson(res, 500, { error: message, function: FUNCTION });
      } finally {
        inflight--;
        if (stopping && inflight === 0) process.exit(0);
      }
    });
  });
  // Nagle's algorithm meeting delayed ACKs adds ~40 ms to keep-alive responses.
  server.on("connection", (socket) => socket.setNoDelay(true));
  server.keepAliveTimeout = 65000;
  server.headersTimeout = 66000;
  let stopping = false;
  const stop = () => {
    stopping = true;
    server.close();
    server.closeIdleConnections();
    if (inflight === 0) process.exit(0);
    setTimeout(() => process.exit(0), 30000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  const port = Number(process.env.PORT || 8080);
  const host = process.env.CUBEFLASH_BIND || "0.0.0.0";
  server.listen(port, host, () => {
    console.error(`cubeflash: ${FUNCTION} serving ${spec} on ${host}:${port}`);
  });
}

process.on("unhandledRejection", (err) => {
  console.error("cubeflash: unhandled rejection:", err && err.stack ? err.stack : err);
});

// The handler's own frames and the error, none of node's loader or the shim's.
function userStack(err) {
  const text = err && err.stack ? String(err.stack) : String(err);
  return text
    .split("\n")
    .filter((line) => !/^\s+at /.test(line) || !(line.includes("node:internal") || line.includes(__filename)))
    .join("\n")
    .replace(/\n+$/, "");
}

main().catch((err) => {
  console.error(`cubeflash: cannot load handler: ${userStack(err)}`);
  process.exit(1);
});
