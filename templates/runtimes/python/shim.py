"""cubeflash python runtime: serves a handler's handle(req) over HTTP/1.1 on $PORT.

Standard library only. The handler is named by CUBEFLASH_HANDLER as "file.py" or
"file.py:function" (default function: handle), relative to the working directory.
GET /_/ready answers 200 once the handler is loaded; GET /_/health answers 200 while the
process serves. A handler exception becomes a 500 with a JSON body; the process keeps serving.
"""

import importlib.util
import json
import os
import signal
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FUNCTION = os.environ.get("CUBEFLASH_FUNCTION", "function")
# Requests being handled, so that SIGTERM can let them finish before the process exits.
INFLIGHT = threading.Condition()
INFLIGHT_COUNT = [0]
DRAIN_SECONDS = 30
# The call a thread is serving: each line it writes to stdout or stderr starts with
# "[call ID] ", so the gateway's logs can show one call's lines under concurrency.
CALL = threading.local()


class CallTagged:
    """A text stream that prefixes each line a thread writes while it serves a call."""

    def __init__(self, raw):
        self._raw = raw

    def write(self, text):
        call = getattr(CALL, "id", None)
        if call is None or not text:
            return self._raw.write(text)
        out = []
        at_start = getattr(CALL, "at_start", True)
        for piece in text.splitlines(keepends=True):
            if at_start:
                out.append(f"[call {call}] ")
            out.append(piece)
            at_start = piece.endswith("\n")
        CALL.at_start = at_start
        self._raw.write("".join(out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._raw, name)


class Request:
    """What a handler receives: method, path, query, headers (lower-case keys) and body."""

    __slots__ = ("method", "path", "query", "query_all", "headers", "body")

    def __init__(self, method, path, query_all, headers, body):
        self.method = method
        self.path = path
        self.query_all = query_all
        self.query = {k: v[-1] for k, v in query_all.items()}
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body) if self.body else None

    def __getitem__(self, key):
        # Handlers written for dict-shaped requests keep working: req["body"], req["query"].
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)


def user_traceback(err):
    """A traceback of the handler's own frames and the error, none of the shim's."""
    if isinstance(err, SyntaxError):
        return "".join(traceback.format_exception_only(type(err), err))
    shim = os.path.abspath(__file__)
    frames = [
        f for f in traceback.extract_tb(err.__traceback__)
        if os.path.abspath(f.filename) != shim and not f.filename.startswith("<frozen")
    ]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(err), err)
    return "".join(lines)


def report_load_error(err, file):
    """The handler failed to import."""
    sys.stderr.write(f"cubeflash: cannot load {file}:\n" + user_traceback(err))
    sys.stderr.flush()


def load_handler(spec):
    file, _, name = spec.partition(":")
    name = name or "handle"
    path = os.path.abspath(file)
    sys.path.insert(0, os.path.dirname(path))
    module_spec = importlib.util.spec_from_file_location("handler", path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"cubeflash: cannot load handler file {file}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["handler"] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as err:  # noqa: BLE001 - reported, then the replica exits
        report_load_error(err, file)
        code = err.code if isinstance(err, SystemExit) else 1
        os._exit(code if isinstance(code, int) else 1)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SystemExit(f"cubeflash: {file} defines no function {name}(req)")
    return fn


def encode_body(value):
    """(content type, bytes) for a handler's return value."""
    if value is None:
        return None, b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "application/octet-stream", bytes(value)
    if isinstance(value, str):
        return "text/plain; charset=utf-8", value.encode("utf-8")
    return "application/json", json.dumps(value).encode("utf-8")


def to_response(result):
    """(status, headers, body bytes) from str, bytes, JSON-able, (status, body) or (status, headers, body)."""
    status, headers, value = 200, {}, result
    if isinstance(result, tuple):
        if len(result) == 3:
            status, headers, value = result
        elif len(result) == 2:
            status, value = result
        else:
            raise TypeError("a tuple result must be (status, body) or (status, headers, body)")
        status = int(status)
        headers = dict(headers or {})
    content_type, body = encode_body(value)
    if value is None and status == 200:
        status = 204
    if content_type and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type
    return status, headers, body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Nagle's algorithm meeting delayed ACKs adds ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "cubeflash-python"
    sys_version = ""
    handle_fn = None

    def log_message(self, format, *args):  # noqa: A002 - per-request lines would flood the logs
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status, headers, body):
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, value):
        self.send(status, {"Content-Type": "application/json"}, json.dumps(value).encode("utf-8"))

    def dispatch(self):
        url = urlsplit(self.path)
        if url.path in ("/_/ready", "/_/health") and self.command == "GET":
            return self.send_json(200, {"status": "ok"})
        with INFLIGHT:
            INFLIGHT_COUNT[0] += 1
        try:
            self.invoke(url)
        finally:
            with INFLIGHT:
                INFLIGHT_COUNT[0] -= 1
                INFLIGHT.notify_all()

    def invoke(self, url):
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        CALL.id = headers.get("x-cubeflash-call-id")
        CALL.at_start = True
        try:
            self.call(url, body, headers)
        finally:
            CALL.id = None

    def call(self, url, body, headers):
        req = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True), headers, body)
        try:
            result = type(self).handle_fn(req)
            if hasattr(result, "__await__"):
                import asyncio  # only async handlers pay for it: it costs ~40 ms of start-up

                result = asyncio.run(_await(result))
            status, out_headers, out_body = to_response(result)
        except Exception as exc:  # the replica keeps serving whatever the handler does
            sys.stderr.write(user_traceback(exc))
            sys.stderr.flush()
            return self.send_json(500, {"error": f"{type(exc).__name__}: {exc}", "function": FUNCTION})
        self.send(status, out_headers, out_body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = dispatch


async def _await(awaitable):
    return await awaitable


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Above the bench's top concurrency (128) with room: a full backlog drops SYNs, and a
    # dropped SYN costs a second-long retransmit that shows as a 1 s p99.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # The gateway closed the connection (a timeout, a client that went away): nothing
        # went wrong in the function, so no traceback in its log.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


def wait_for_function():
    """Warm-pool mode (--pool): the interpreter and the shim are loaded; wait for the gateway
    to name the function to become: one JSON line with dir, env and port."""
    global FUNCTION
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)
    job = json.loads(line)
    os.chdir(job["dir"])
    os.environ.update(job["env"])
    FUNCTION = os.environ.get("CUBEFLASH_FUNCTION", FUNCTION)


def watch_lifeline():
    """The gateway holds the other end of our stdin (CUBEFLASH_LIFELINE=stdin): when it closes,
    the gateway is gone, however it died, and this replica and all it started go too."""
    if os.environ.get("CUBEFLASH_LIFELINE") != "stdin":
        return

    def watch():
        # The raw descriptor: a thread blocked in sys.stdin's buffer holds its lock, which
        # makes interpreter shutdown abort.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        try:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def main():
    sys.stdout.reconfigure(line_buffering=True)
    sys.stdout = CallTagged(sys.stdout)
    sys.stderr = CallTagged(sys.stderr)
    if sys.argv[1:2] == ["--pool"]:
        wait_for_function()
        del sys.argv[1]
    watch_lifeline()
    # Installed dependencies (requirements.txt), also when a pooled interpreter takes the
    # function: after the handler's own folder on the path, before the standard library.
    deps = os.environ.get("CUBEFLASH_DEPS")
    if deps:
        sys.path.insert(0, deps)
    spec = os.environ.get("CUBEFLASH_HANDLER") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not spec:
        raise SystemExit("cubeflash: set CUBEFLASH_HANDLER to the handler file, e.g. handler.py")
    Handler.handle_fn = staticmethod(load_handler(spec))
    port = int(os.environ.get("PORT", "8080"))
    host = os.environ.get("CUBEFLASH_BIND", "0.0.0.0")
    server = Server((host, port), Handler)

    def stop(signum, frame):
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"cubeflash: {FUNCTION} serving {spec} on {host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    with INFLIGHT:
        INFLIGHT.wait_for(lambda: INFLIGHT_COUNT[0] == 0, timeout=DRAIN_SECONDS)
    server.server_close()


if __name__ == "__main__":
    main()
