#!/usr/bin/python3
"""A small HTTP/1.1 server for runbox's HTTP tests.

    http_server.py --port-file F [--unix SOCK] [--parent PID]

Listens on 127.0.0.1 (a free port, written to F once listening) or on the unix socket SOCK
(then F gets "unix"). Exits when the process PARENT is gone, or after 5 minutes at most, so a
crashed test never leaves it behind.

Routes:
  GET  /hello                 "hello world", with a repeated X-Multi header
  GET  /status/N              status N
  GET  /slow?n=N&delay=D      N chunks "line i\\n", sleeping D seconds before each after the first
  GET  /large?size=N          N bytes ("0123456789abcdef" repeated), Content-Length set
  GET  /sleep?s=S             answers after S seconds
  GET  /headers               the request headers, one "name: value" line each
  GET  /trailers              a chunked body followed by the trailer X-Checksum: abc123
  GET  /redirect              302 to /hello
  POST|PUT /echo              the request body (Content-Length or chunked) back
  HEAD /hello                 the headers of GET /hello
"""
import argparse
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# runbox blocks these signals (it reads them through a signalfd) and children started with
# os.execute inherit the mask: unblock them so `kill` works on us and on what we start.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

PATTERN = b"0123456789abcdef" * 4096  # 64 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):
        return "client"

    def send(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        p = url.path
        if p == "/hello":
            self.send(200, b"hello world", [("Content-Type", "text/plain"), ("X-Multi", "a"), ("X-Multi", "b")])
        elif p.startswith("/status/"):
            code = int(p.rsplit("/", 1)[1])
            self.send(code, b"status %d" % code)
        elif p == "/slow":
            n, delay = int(q.get("n", "3")), float(q.get("delay", "0.5"))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                if i:
                    time.sleep(delay)
                self.chunk(b"line %d\n" % i)
            self.wfile.write(b"0\r\n\r\n")
        elif p == "/large":
            size = int(q["size"])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            while left:
                k = min(left, len(PATTERN))
                self.wfile.write(PATTERN[:k])
                left -= k
        elif p == "/sleep":
            time.sleep(float(q.get("s", "1")))
            self.send(200, b"slept")
        elif p == "/headers":
            body = "".join("%s: %s\n" % (k.lower(), v) for k, v in self.headers.items())
            self.send(200, body.encode())
        elif p == "/trailers":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            self.chunk(b"part one,")
            self.chunk(b"part two")
            self.wfile.write(b"0\r\nX-Checksum: abc123\r\n\r\n")
        elif p == "/redirect":
            self.send(302, b"", [("Location", "/hello")])
        else:
            self.send(404, b"not found")

    def do_POST(self):
        if urlparse(self.path).path != "/echo":
            self.read_body()
            self.send(404, b"not found")
            return
        body = self.read_body()
        self.send(200, body, [("X-Method", self.command),
                              ("X-Request-Transfer-Encoding", self.headers.get("Transfer-Encoding", "none"))])

    do_PUT = do_POST

    def do_HEAD(self):
        self.send_response(200 if self.path == "/hello" else 404)
        self.send_header("Content-Length", "11")
        self.end_headers()


class TCPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 256


def watch_parent(pid):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if pid and not os.path.exists("/proc/%d" % pid):
            break
        time.sleep(0.2)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--unix")
    ap.add_argument("--parent", type=int, default=0)
    a = ap.parse_args()
    if a.unix:
        if os.path.exists(a.unix):
            os.unlink(a.unix)
        srv = UnixServer(a.unix, Handler)
        port = "unix"
    else:
        srv = TCPServer(("127.0.0.1", 0), Handler)
        port = str(srv.server_address[1])
    threading.Thread(target=watch_parent, args=(a.parent,), daemon=True).start()
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(port)
    os.rename(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
