"""Sandboxes and their execs as local bwrap process trees.

A sandbox is a folder DIR/sandboxes/<id>/ (app/, tmp/, home/, work/) and its entrypoint, one
bwrap process; each exec is another bwrap with the same binds (so the same /app). The sandbox
ends when its entrypoint exits (SUCCESS or FAILURE with its exit code), when its timeout passes
(TIMEOUT), on SandboxTerminate (TERMINATED), or when an injected fault kills it
(INTERNAL_FAILURE); then every process of it is killed.
"""
import asyncio
import os
import secrets as pysecrets
import string
import time

import box

ALNUM = string.digits + string.ascii_letters
CHUNK = 64 * 1024

SUCCESS, FAILURE, TERMINATED, TIMEOUT, INTERNAL_FAILURE = 1, 2, 3, 4, 6
STATUS_NAMES = {0: "RUNNING", 1: "SUCCESS", 2: "FAILURE", 3: "TERMINATED", 4: "TIMEOUT",
                5: "INIT_FAILURE", 6: "INTERNAL_FAILURE"}


def new_id(prefix):
    return prefix + "".join(pysecrets.choice(ALNUM) for _ in range(22))


def new_task_id():
    while True:
        tid = new_id("ta-")
        if not tid.endswith("V"):          # ids ending in V are V2 task ids to the SDKs
            return tid


class Output:
    """One output stream of a process, kept whole so that a reader can start at any offset."""

    def __init__(self):
        self.data = bytearray()
        self.closed = False
        self._changed = asyncio.Event()

    def _notify(self):
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def append(self, chunk):
        self.data += chunk
        self._notify()

    def close(self):
        self.closed = True
        self._notify()

    async def chunks(self, offset):
        """Yields bytes from offset on (at most CHUNK each, never empty) until the stream ends."""
        while True:
            ev = self._changed
            if offset < len(self.data):
                chunk = bytes(self.data[offset:offset + CHUNK])
                offset += len(chunk)
                yield chunk
            elif self.closed:
                return
            else:
                await ev.wait()


async def _pump(reader, out):
    try:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                break
            out.append(chunk)
    except (ConnectionError, OSError):
        pass
    finally:
        out.close()


class Exec:
    def __init__(self, sandbox, exec_id, argv, cwd):
        self.id = exec_id
        self.sandbox = sandbox
        self.argv = list(argv)
        self.cwd = cwd
        self.proc = None
        self.stdout = Output()
        self.stderr = Output()
        self.stdin_written = 0
        self.stdin_closed = False
        self.stdin_lock = asyncio.Lock()
        self.code = None
        self.signal = None
        self.killed = False
        self.done = asyncio.Event()
        self.started_at = time.time()
        self.tasks = []
        self.timer = None

    async def start(self, env, stdout_pipe, stderr_mode, timeout):
        """stderr_mode: "pipe", "stdout" (merged into stdout) or "null"."""
        sb = self.sandbox
        cmd = box.command(sb.world.bwrap, sb.world.host, sb.binds, sb.network, self.cwd, self.argv)
        self.proc = await box.spawn(cmd, env, stdin=True, stdout=stdout_pipe, stderr=stderr_mode)
        if stdout_pipe:
            self.tasks.append(asyncio.ensure_future(_pump(self.proc.stdout, self.stdout)))
        else:
            self.stdout.close()
        if stderr_mode == "pipe":
            self.tasks.append(asyncio.ensure_future(_pump(self.proc.stderr, self.stderr)))
        else:
            self.stderr.close()
        self.tasks.append(asyncio.ensure_future(self._wait()))
        if timeout:
            self.timer = asyncio.ensure_future(self._timeout(timeout))

    async def _timeout(self, seconds):
        await asyncio.sleep(seconds)
        self.kill()

    async def _wait(self):
        rc = await self.proc.wait()
        if self.killed:
            self.signal = 9
        elif rc < 0:
            self.signal = -rc
        else:
            self.code = rc
        self.done.set()
        if self.timer:
            self.timer.cancel()

    def running(self):
        return not self.done.is_set()

    def kill(self):
        if self.proc and self.running():
            self.killed = True
            box.kill_tree(self.proc.pid)

    async def write_stdin(self, offset, data, eof):
        """Writes data found at byte offset of the stdin stream (bytes already written are
        skipped, so a retried write is harmless); eof closes stdin after it. Returns None, or an
        error message for FAILED_PRECONDITION."""
        async with self.stdin_lock:
            if offset > self.stdin_written:
                return ("stdin offset %d is past the %d bytes written so far to exec %s"
                        % (offset, self.stdin_written, self.id))
            skip = self.stdin_written - offset
            data = data[skip:] if skip < len(data) else b""
            if data:
                if self.stdin_closed:
                    return "stdin of exec %s is already closed" % self.id
                if not self.running():
                    return "the process of exec %s has exited; its stdin is closed" % self.id
                try:
                    self.proc.stdin.write(data)
                    await self.proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    return "the process of exec %s closed its stdin" % self.id
                self.stdin_written += len(data)
            if eof and not self.stdin_closed:
                self.stdin_closed = True
                try:
                    self.proc.stdin.close()
                except (BrokenPipeError, ConnectionResetError):
                    pass
            return None

    def public(self):
        return {"id": self.id, "command_args": self.argv, "workdir": self.cwd,
                "running": self.running(), "code": self.code, "signal": self.signal,
                "stdout_bytes": len(self.stdout.data), "stderr_bytes": len(self.stderr.data),
                "stdin_bytes": self.stdin_written}


class Sandbox:
    def __init__(self, world, app_id, definition, tags, env, image):
        self.world = world
        self.id = new_id("sb-")
        self.task_id = new_task_id()
        self.app_id = app_id
        self.definition = definition
        self.tags = dict(tags)
        self.name = definition.name if definition.HasField("name") else ""
        self.image = image
        self.env = env
        self.created_at = time.time()
        self.timeout = definition.timeout_secs or 300
        self.workdir = definition.workdir if definition.HasField("workdir") else ""
        na = definition.network_access.network_access_type
        self.network = not (na == 2 or definition.block_network)
        self.dir = os.path.join(world.state_dir, "sandboxes", self.id)
        self.binds = []
        self.entry = None
        self.execs = {}
        self.result = None
        self.finished = asyncio.Event()
        self.finished_at = None
        self.tasks = []

    # -- setup

    def _make_binds(self):
        for sub in ("app", "tmp", "home"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        os.chmod(os.path.join(self.dir, "tmp"), 0o1777)
        binds = [("/app", os.path.join(self.dir, "app"), False),
                 ("/tmp", os.path.join(self.dir, "tmp"), False),
                 ("/root", os.path.join(self.dir, "home"), False)]
        wd = self.workdir
        if wd and wd != "/":
            inside = [b for b in binds if wd == b[0] or wd.startswith(b[0] + "/")]
            if inside:                       # made in its folder, as Modal makes the workdir
                os.makedirs(os.path.join(inside[0][1], wd[len(inside[0][0]):].lstrip("/")), exist_ok=True)
            else:
                host = os.path.join(self.dir, "work")
                os.makedirs(host, exist_ok=True)
                binds.append((wd, host, False))
        for vm in self.definition.volume_mounts:
            vol = self.world.volumes.by_id[vm.volume_id]
            host = vol.dir
            if vm.HasField("sub_path") and vm.sub_path:
                host = os.path.join(vol.dir, vm.sub_path.strip("/"))
                os.makedirs(host, exist_ok=True)
            binds.append((box.clean_abs(vm.mount_path), host, vm.read_only))
        self.binds = binds

    def exec_env(self, extra=None):
        env = {"PATH": box.PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm",
               "MODAL_SANDBOX_ID": self.id, "MODAL_TASK_ID": self.task_id}
        env.update(self.image.env if self.image else {})
        env.update(self.env)
        env.update(extra or {})
        return env

    def default_cwd(self):
        return self.workdir or (self.image.workdir if self.image and self.image.workdir else "/")

    async def start(self, die_after=None):
        self._make_binds()
        argv = list(self.definition.entrypoint_args)
        if not argv and self.image and self.image.cmd:
            argv = list(self.image.cmd)
        if not argv:
            argv = ["sleep", str(self.timeout)]
        cmd = box.command(self.world.bwrap, self.world.host, self.binds, self.network,
                          self.default_cwd(), argv)
        self.entry = await box.spawn(cmd, self.exec_env(), stdin=False,
                                     log=os.path.join(self.dir, "entrypoint.log"))
        self.entry_argv = argv
        self.tasks.append(asyncio.ensure_future(self._watch_entry()))
        self.tasks.append(asyncio.ensure_future(self._timer(self.timeout, TIMEOUT,
                                                             "Sandbox timed out after %ds" % self.timeout)))
        if die_after is not None:
            self.tasks.append(asyncio.ensure_future(self._timer(
                die_after, INTERNAL_FAILURE, "the worker running this sandbox died (injected fault)")))

    async def _watch_entry(self):
        rc = await self.entry.wait()
        if self.result is None:
            if rc == 0:
                self.finish(SUCCESS, 0)
            else:
                code = rc if rc > 0 else 128 - rc
                self.finish(FAILURE, code, "the sandbox's entrypoint %s exited with status %d%s"
                            % (self.entry_argv, code, self._log_tail()))

    def _log_tail(self):
        try:
            with open(os.path.join(self.dir, "entrypoint.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 400))
                tail = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return ": " + tail if tail else ""

    async def _timer(self, seconds, status, message):
        await asyncio.sleep(seconds)
        self.finish(status, 0, message)

    # -- state

    def alive(self):
        return self.result is None

    def finish(self, status, exitcode=0, exception=""):
        """Ends the sandbox (once): records the result and kills every process of it."""
        if self.result is not None:
            return False
        r = self.world.protos.api.GenericResult(status=status, exitcode=exitcode, exception=exception)
        self.result = r
        self.finished_at = time.time()
        if self.entry and self.entry.returncode is None:
            box.kill_tree(self.entry.pid)
        for ex in self.execs.values():
            ex.kill()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.finished.set()
        return True

    async def reap(self, timeout=5.0):
        """Waits until every process of the (finished) sandbox is gone."""
        procs = [p for p in [self.entry] + [e.proc for e in self.execs.values()] if p]
        for p in procs:
            if p.returncode is None:
                box.kill_tree(p.pid)
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout)

    def public(self):
        d = self.definition
        res = d.resources
        return {
            "id": self.id, "task_id": self.task_id, "app_id": self.app_id, "name": self.name,
            "tags": self.tags, "alive": self.alive(),
            "status": self.result.status if self.result is not None else 0,
            "status_name": STATUS_NAMES.get(self.result.status if self.result is not None else 0, "?"),
            "exitcode": self.result.exitcode if self.result is not None else None,
            "exception": self.result.exception if self.result is not None else None,
            "image_id": d.image_id, "secret_ids": list(d.secret_ids),
            "env_keys": sorted(self.env),
            "volume_mounts": [{"volume_id": v.volume_id, "mount_path": v.mount_path,
                               "read_only": v.read_only,
                               "allow_background_commits": v.allow_background_commits}
                              for v in d.volume_mounts],
            "resources": {"milli_cpu": res.milli_cpu, "memory_mb": res.memory_mb,
                          "milli_cpu_max": res.milli_cpu_max, "memory_mb_max": res.memory_mb_max},
            "timeout_secs": self.timeout, "workdir": self.workdir, "network": self.network,
            "entrypoint_args": getattr(self, "entry_argv", list(d.entrypoint_args)),
            "created_at": self.created_at, "finished_at": self.finished_at, "dir": self.dir,
            "pids": self.pids(),
            "execs": [e.public() for e in self.execs.values()],
        }

    def pids(self):
        out = []
        for p in [self.entry] + [e.proc for e in self.execs.values()]:
            if p is not None and p.returncode is None:
                out.append(p.pid)
        return out
