#!/usr/bin/env python3
"""Drive an interactive program through a pseudo-terminal, step by step, with timeouts.

usage: pty_drive.py [--timeout SECONDS] [--cols N] -- COMMAND [ARGS...]  < SCRIPT

SCRIPT has one step per line (text after the keyword uses Python escapes: \\r \\x03 \\x1b[A):
  send TEXT              write TEXT to the terminal (what the user types)
  expect REGEX           wait until REGEX matches the output after the previous match
  expect_within S REGEX  the same with its own timeout of S seconds
  sleep S                wait S seconds (the output keeps being collected)
  exit CODE              wait for the program to exit with CODE
Blank lines and lines starting with # are skipped.

The whole output goes to stdout at the end. On the first failing step, a message naming the step
and the output it saw goes to stderr and the exit status is 1. The program is killed if it is
still running at the end, so nothing hangs.
"""
import codecs
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time


def raw(text):
    return text.encode("utf-8", "surrogateescape")


def unescape(text):
    """The bytes of text with backslash escapes applied; UTF-8 text stays as it is."""
    return codecs.escape_decode(raw(text))[0]


class Session:
    def __init__(self, argv, cols, timeout):
        self.timeout = timeout
        self.out = b""
        self.mark = 0          # output before this offset was consumed by earlier expects
        self.status = None
        self.pid, self.fd = pty.fork()
        if self.pid == 0:      # child: a session leader with the pty as controlling terminal
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
            env = dict(os.environ)
            env["TERM"] = "xterm"   # the same escape sequences everywhere
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)

    def pump(self, seconds):
        """Collects output for up to `seconds`; returns False once the program has gone."""
        ready, _, _ = select.select([self.fd], [], [], max(seconds, 0))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        if not data:
            return False
        self.out += data
        return True

    def send(self, data):
        os.write(self.fd, data)

    def expect(self, pattern, timeout):
        rx = re.compile(raw(pattern), re.S)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.out, self.mark)
            if m:
                self.mark = m.end()
                return True
            left = end - time.monotonic()
            if left <= 0 or not self.pump(min(left, 0.1)) and not rx.search(self.out, self.mark):
                return False

    def wait_exit(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self.pump(0.05):  # what it wrote before it went
                    pass
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        return None

    def kill(self):
        if self.status is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
            if self.wait_exit(1) is not None:
                return


def main():
    args = sys.argv[1:]
    timeout, cols = 10.0, 100
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--timeout":
            timeout = float(args.pop(0))
        elif flag == "--cols":
            cols = int(args.pop(0))
        else:
            sys.exit("pty_drive: unknown flag %s (see the usage at the top of the file)" % flag)
    if not args or len(args) < 2:
        sys.exit("pty_drive: expected -- COMMAND [ARGS...]")
    script = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    steps = [l for l in script.split("\n") if l.strip() and not l.startswith("#")]
    s = Session(args[1:], cols, timeout)
    failure = None
    for n, step in enumerate(steps, 1):
        word, _, rest = step.partition(" ")
        if word == "send":
            s.pump(0)
            s.send(unescape(rest))
        elif word == "expect":
            if not s.expect(rest, timeout):
                failure = "step %d (%s): no match within %gs" % (n, step, timeout)
        elif word == "expect_within":
            secs, _, rx = rest.partition(" ")
            if not s.expect(rx, float(secs)):
                failure = "step %d (%s): no match within %ss" % (n, step, secs)
        elif word == "sleep":
            end = time.monotonic() + float(rest)
            while time.monotonic() < end and s.pump(end - time.monotonic()):
                pass
        elif word == "exit":
            code = s.wait_exit(timeout)
            if code != int(rest):
                failure = "step %d (%s): exit status %s" % (n, step, code)
        else:
            failure = "step %d: unknown step %r" % (n, step)
        if failure:
            break
    s.kill()
    sys.stdout.write(s.out.decode("utf-8", "replace"))
    if failure:
        seen = s.out[s.mark:].decode("utf-8", "replace")
        sys.stderr.write("pty_drive: %s\noutput after the last match: %r\n" % (failure, seen))
        sys.exit(1)


if __name__ == "__main__":
    main()
