"""The HTTP/1.1 listener: volume block URLs and the admin API, in a thread of its own.

  GET  /files/<volume_id>?path=&start=&len=&sig=   a download range (VolumeGetFile2 URLs)
  PUT  /blocks/<sha256>?sig=                       a block upload (VolumePutFiles2 URLs)
  GET  /admin/state                                everything the server knows, as JSON
  POST /admin/faults, DELETE /admin/faults, GET /admin/faults
  POST /admin/secrets {"name", "env": {...}, "environment"?}   create or replace a named secret
  DELETE /admin/calls                              forget the call log
"""
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import rpc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _read_body(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass                                   # trailers
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else b""


def make_handler(world):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "modal-standin"

        def log_message(self, fmt, *args):                 # quiet
            pass

        def _send(self, status, body, ctype="application/octet-stream"):
            if isinstance(body, str):
                body = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status, value):
            self._send(status, json.dumps(value, indent=1, default=str) + "\n", "application/json")

        def _http_fault(self, name):
            """Faults on the block URLs: method "BlockGet" / "BlockPut", kinds slow, unavailable
            (503) and status (http_status)."""
            def take(kind):
                return world.call_soon(world.faults.take, name, kind)
            slow = take("slow")
            if slow:
                time.sleep(slow["seconds"])
            if take("unavailable"):
                self._send(503, "injected fault: 503 on %s\n" % name, "text/plain")
                return True
            f = take("status")
            if f:
                self._send(f.get("http_status", 500), "injected fault on %s\n" % name, "text/plain")
                return True
            return False

        def _record(self, name, status):
            def add():
                world.log.calls.append({"method": name, "service": "http", "code": status,
                                        "path": self.path.split("?")[0], "time": time.time()})
            world.call_soon(add)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if url.path == "/admin/state":
                return self._json(200, world.call_soon(world.snapshot))
            if url.path == "/admin/faults":
                return self._json(200, world.call_soon(world.faults.public))
            if len(parts) == 2 and parts[0] == "files":
                if self._http_fault("BlockGet"):
                    return
                status, body = world.volumes.http_get(parts[1], url.query)
                self._record("BlockGet", status)
                return self._send(status, body)
            self._send(404, "no such path: %s\n" % url.path, "text/plain")

        def do_PUT(self):
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            body = _read_body(self)
            if len(parts) == 2 and parts[0] == "blocks":
                if self._http_fault("BlockPut"):
                    return
                status, reply = world.volumes.http_put(parts[1], url.query, body)
                self._record("BlockPut", status)
                return self._send(status, reply)
            self._send(404, "no such path: %s\n" % url.path, "text/plain")

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            body = _read_body(self)
            try:
                value = json.loads(body or b"null")
            except ValueError as e:
                return self._json(400, {"error": "the body is not JSON: %s" % e})
            if url.path == "/admin/faults":
                try:
                    f = world.call_soon(world.faults.add, value)
                except (ValueError, TypeError) as e:
                    return self._json(400, {"error": str(e)})
                return self._json(200, {k: v for k, v in f.items() if k != "grpc_code"})
            if url.path == "/admin/secrets":
                if not isinstance(value, dict) or not isinstance(value.get("name"), str) \
                        or not isinstance(value.get("env"), dict):
                    return self._json(400, {"error": "send {\"name\": NAME, \"env\": {KEY: VALUE}}"})
                try:
                    sec = world.call_soon(world.secret_set, value.get("environment", ""),
                                          value["name"], {str(k): str(v) for k, v in value["env"].items()})
                except rpc.Fail as e:
                    return self._json(400, {"error": e.message})
                return self._json(200, {"id": sec["id"], "name": sec["name"], "keys": sorted(sec["env"])})
            self._json(404, {"error": "no such path: %s" % url.path})

        def do_DELETE(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/admin/faults":
                world.call_soon(world.faults.clear)
                return self._json(200, {"cleared": True})
            if url.path == "/admin/calls":
                world.call_soon(world.log.calls.clear)
                return self._json(200, {"cleared": True})
            self._json(404, {"error": "no such path: %s" % url.path})

    return Handler


class AdminServer:
    def __init__(self):
        self.httpd = None
        self.thread = None
        self.world = None

    def bind(self):
        """Listens on a free port at once (the URL is needed before the world exists); requests
        are served from start() on."""
        self.httpd = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def start(self, world):
        self.world = world
        self.httpd.RequestHandlerClass = make_handler(world)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       name="admin-http", daemon=True)
        self.thread.start()

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
