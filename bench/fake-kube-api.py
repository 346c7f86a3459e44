#!/usr/bin/env python3
"""The least of a Kubernetes API server that `cubeflash gateway` needs to serve one function,
for benchmarks only (the tests use tests/fake_kube, which behaves like a real one): the route
table ConfigMap, one ready Deployment, watches that stay open, and scale patches.

    python3 bench/fake-kube-api.py PORT NAMESPACE FUNCTION SERVICE_URL
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, NS, FN, SERVICE = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ROUTES = {
    "version": 1,
    "namespace": NS,
    "functions": [{
        "name": FN, "runtime": "exec", "deployment": FN, "service": SERVICE, "baseline": None,
        "triggers": [],
        "scale": {"min": 1, "max": 1, "concurrency": 1000, "limit": 0, "idle": "60s", "coldStartTimeout": "30s"},
        "timeout": "30s",
    }],
}
CONFIGMAP = {
    "apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": "cubeflash-routes", "namespace": NS, "resourceVersion": "1"},
    "data": {"routes.json": json.dumps(ROUTES)},
}
DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": FN, "namespace": NS, "resourceVersion": "1",
                 "labels": {"app.kubernetes.io/managed-by": "cubeflash"}},
    "spec": {"replicas": 1},
    "status": {"replicas": 1, "readyReplicas": 1},
}


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if "watch=true" in query or "watch=1" in query:
            # Open and silent: nothing changes during a benchmark.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    time.sleep(3600)
            except Exception:
                return
        if path == f"/api/v1/namespaces/{NS}/configmaps/cubeflash-routes":
            return self.send_json(CONFIGMAP)
        if path == f"/api/v1/namespaces/{NS}/configmaps":
            return self.send_json({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": [CONFIGMAP]})
        if path == f"/apis/apps/v1/namespaces/{NS}/deployments":
            return self.send_json({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "1"}, "items": [DEPLOYMENT]})
        self.send_json({"kind": "Status", "code": 404, "message": "not in this fake"}, 404)

    def do_PATCH(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_json({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": FN, "namespace": NS}, "spec": {"replicas": 1}, "status": {"replicas": 1}})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Api).serve_forever()
