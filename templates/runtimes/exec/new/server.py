"""{{name}}: a program that serves HTTP on $PORT itself (the exec runtime's contract)."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive responses would wait ~40 ms otherwise

    def do_GET(self):
        if self.path == "/_/ready":
            return self.reply(200, {"status": "ok"})
        self.reply(200, {"hello": "world", "path": self.path})

    def reply(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
