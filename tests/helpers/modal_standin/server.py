#!/usr/bin/python3
"""A stand-in Modal server for runbox's tests (see README.md next to this file).

    server.py --state DIR [--token-id ID] [--token-secret S] [--build-run exec|skip]
              [--jwt-ttl SECONDS] [--die-with-parent]

Serves modal.client.ModalClient and modal.task_command_router.TaskCommandRouter on one
plaintext HTTP/2 listener and block URLs plus the admin API on an HTTP/1.1 listener; prints
{"grpc_url": ..., "http_url": ...} on one line once ready. SIGTERM or SIGINT: every sandbox is
killed, then it exits 0.
"""
import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True          # no __pycache__ in the source tree

import grpc  # noqa: E402

import admin  # noqa: E402
import box  # noqa: E402
import control  # noqa: E402
import protos  # noqa: E402
import router  # noqa: E402
import rpc  # noqa: E402
import world as world_mod  # noqa: E402

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 100 * 1024 * 1024),
    ("grpc.max_send_message_length", 100 * 1024 * 1024),
    # the SDKs ping every 30 s, also without calls: allow it instead of answering GOAWAY
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]


def parse_args(argv):
    ap = argparse.ArgumentParser(description="stand-in Modal server for tests")
    ap.add_argument("--state", required=True, help="folder for sandboxes, volumes, blocks, protos")
    ap.add_argument("--token-id", default="ak-test")
    ap.add_argument("--token-secret", default="as-test")
    ap.add_argument("--build-run", choices=["exec", "skip"], default="exec",
                    help="exec: run image RUN lines in bwrap (default); skip: log them only")
    ap.add_argument("--jwt-ttl", type=float, default=3600.0, help="lifetime of router JWTs, seconds")
    ap.add_argument("--die-with-parent", action="store_true",
                    help="stop (cleanly) when the process that started this one ends")
    return ap.parse_args(argv)


def die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:                   # the parent is already gone
        os.kill(os.getpid(), signal.SIGTERM)


async def serve(args):
    state_dir = os.path.abspath(args.state)
    os.makedirs(state_dir, exist_ok=True)
    P = protos.load(os.path.join(state_dir, "gen"))
    bwrap = box.find_bwrap()
    if not bwrap:
        print("modal stand-in: bwrap (bubblewrap) is not installed: apt-get install bubblewrap",
              file=sys.stderr)
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http = admin.AdminServer()
    http_url = http.bind()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    w = world_mod.World(P, state_dir, http_url, port, args.token_id, args.token_secret, bwrap,
                        build_run=args.build_run, jwt_ttl=args.jwt_ttl)
    w.loop = loop
    gate = rpc.Gate(P, w.faults, w.log, w.auth)
    server.add_generic_rpc_handlers(rpc.handlers(P, gate, {
        "ModalClient": control.ModalClient(w),
        "TaskCommandRouter": router.TaskCommandRouter(w),
    }))
    await server.start()
    http.start(w)
    try:
        print(json.dumps({"grpc_url": "http://127.0.0.1:%d" % port, "http_url": http_url}), flush=True)
        await stop.wait()
    finally:
        await w.shutdown()
        await server.stop(0.2)
        http.stop()
    return 0


def main(argv=None):
    # runbox blocks these signals (it reads them through a signalfd); a child started by a tool
    # that forgot to reset the mask would not see them
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.die_with_parent:
        die_with_parent()
    rc = asyncio.run(serve(args))
    # every sandbox is gone by now; skip the interpreter's slow teardown of grpc's threads
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
