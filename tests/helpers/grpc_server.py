#!/usr/bin/python3
"""A gRPC server for runbox's gRPC tests, with raw-bytes handlers (no generated code).

    grpc_server.py --port-file F [--parent PID] [--unix SOCK]

Listens on a free 127.0.0.1 port (cleartext HTTP/2) and writes it to F (with --unix, on the unix
socket SOCK as well). Exits when the process
PARENT is gone, or after 5 minutes at most. Every call gets trailing metadata x-peer (the client's
address and port, to tell connections apart). Methods of service test.Echo:

  Say       unary: the request back
  Stream    server streaming: request "N" -> N messages "msg 0" .. "msg N-1"
  StreamBig server streaming: request "N SIZE" -> N messages of SIZE bytes
  Fail      unary: request "CODE_NAME:message" -> aborts with that status (no message sent)
  StreamFail server streaming: sends "one", "two", then aborts with INVALID_ARGUMENT
  Slow      unary: request "SECONDS" -> sleeps, then answers "done"
  Meta      unary: answers the request metadata ("key=value" lines, sorted; then
            time_remaining=S when the call has a deadline), sends initial
            metadata x-initial: yes and trailing metadata x-trailing: done, x-raw-bin: 00 01 02
  Empty     answers OK without a message (wrong for a unary call)
  Two       answers two messages (wrong for a unary call)
"""
import argparse
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

# runbox blocks these signals (it reads them through a signalfd) and children started with
# os.execute inherit the mask: unblock them so `kill` works.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def tag_peer(context):
    context.set_trailing_metadata((("x-peer", context.peer()),))


def say(request, context):
    tag_peer(context)
    return request


def stream(request, context):
    tag_peer(context)
    for i in range(int(request.decode())):
        yield b"msg %d" % i


def stream_big(request, context):
    tag_peer(context)
    n, size = (int(v) for v in request.decode().split())
    for i in range(n):
        yield bytes([65 + i % 26]) * size


def fail(request, context):
    name, _, message = request.decode().partition(":")
    context.abort(getattr(grpc.StatusCode, name), message)


def stream_fail(request, context):
    yield b"one"
    yield b"two"
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad item 3")


def slow(request, context):
    time.sleep(float(request.decode()))
    return b"done"


def meta(request, context):
    context.send_initial_metadata((("x-initial", "yes"),))
    context.set_trailing_metadata((("x-trailing", "done"), ("x-raw-bin", b"\x00\x01\x02")))
    lines = sorted("%s=%s" % (k, v if isinstance(v, str) else v.hex()) for k, v in context.invocation_metadata())
    if context.time_remaining() is not None:
        lines.append("time_remaining=%d" % round(context.time_remaining()))
    return "\n".join(lines).encode()


def empty(request, context):
    return iter(())


def two(request, context):
    yield b"first"
    yield b"second"


def handlers():
    unary = grpc.unary_unary_rpc_method_handler
    streaming = grpc.unary_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler("test.Echo", {
        "Say": unary(say),
        "Stream": streaming(stream),
        "StreamBig": streaming(stream_big),
        "Fail": unary(fail),
        "StreamFail": streaming(stream_fail),
        "Slow": unary(slow),
        "Meta": unary(meta),
        "Empty": streaming(empty),
        "Two": streaming(two),
    })


def watch_parent(pid, server):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if pid and not os.path.exists("/proc/%d" % pid):
            break
        time.sleep(0.2)
    server.stop(0)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--unix")
    a = ap.parse_args()
    limit = 64 * 1024 * 1024
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    if a.unix:
        server.add_insecure_port("unix:" + a.unix)
    server.start()
    threading.Thread(target=watch_parent, args=(a.parent, server), daemon=True).start()
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, a.port_file)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
