#!/usr/bin/python3
"""Runs a server program for a test and makes sure it goes away with the test.

    serve.py --port-file F [--parent PID] -- PROGRAM ARGS...

Picks a free 127.0.0.1 port, puts it in place of "{port}" in ARGS, starts PROGRAM, waits until the
port accepts connections and writes the port to F. The program is killed when this process gets
SIGTERM, when the process PARENT is gone, or after 5 minutes at most.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time


# runbox blocks these signals (it reads them through a signalfd) and children started with
# os.execute inherit the mask: unblock them so `kill` works on us and on what we start.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    port = free_port()
    child = subprocess.Popen([c.replace("{port}", str(port)) for c in cmd])

    def stop(*_):
        child.kill()
        child.wait()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                print("serve.py: %s did not start listening on %d" % (cmd[0], port), file=sys.stderr)
                stop()
            time.sleep(0.02)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, a.port_file)
    end = time.monotonic() + 300
    while time.monotonic() < end and child.poll() is None:
        if a.parent and not os.path.exists("/proc/%d" % a.parent):
            break
        time.sleep(0.2)
    stop()


if __name__ == "__main__":
    main()
