"""Images: one per layer definition (ImageGetOrCreate), built in the background.

A layer's first Dockerfile line is `FROM <registry tag>` (the host's system stands for any tag)
or `FROM base` (the parent named in base_images). RUN lines run at build time in a bwrap sandbox
like a sandbox's (host system read-only, scratch /app, /tmp and /root), their output going to the
build log; their effects on files are not kept. ENV, WORKDIR, ARG and CMD are kept in the image
(env, working folder and default entrypoint of its sandboxes); other instructions are logged and
ignored. The same definition gives the same image id; a finished image answers at once.
"""
import asyncio
import hashlib
import json
import os
import shlex
import shutil
import time

import box
from sandboxes import new_id

RUNNING, SUCCESS, FAILURE = 0, 1, 2
STDOUT, STDERR, INFO = 1, 2, 3


class Image:
    def __init__(self, image_id, commands, base):
        self.id = image_id
        self.commands = list(commands)
        self.base = base
        self.env = dict(base.env) if base else {}
        self.workdir = base.workdir if base else ""
        self.cmd = list(base.cmd) if base and base.cmd else []
        self.status = RUNNING
        self.exception = ""
        self.logs = []                 # (data, file_descriptor); entry id = index + 1
        self.builds = 0
        self.created_at = time.time()
        self._changed = asyncio.Event()
        self.task = None
        self.proc = None

    def log(self, data, fd=STDOUT):
        if data:
            self.logs.append((data, fd))
            self._notify()

    def _notify(self):
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    def done(self, status, exception=""):
        self.status = status
        self.exception = exception
        self._notify()

    def public(self):
        return {"id": self.id, "dockerfile_commands": self.commands,
                "base_image_id": self.base.id if self.base else None,
                "status": {RUNNING: "BUILDING", SUCCESS: "SUCCESS", FAILURE: "FAILURE"}[self.status],
                "exception": self.exception, "env_keys": sorted(self.env), "workdir": self.workdir,
                "cmd": self.cmd, "builds": self.builds, "log_entries": len(self.logs)}


def _split_instruction(line):
    line = line.strip()
    word, _, rest = line.partition(" ")
    return word.upper(), rest.strip()


def _json_list(rest):
    if rest.startswith("["):
        try:
            v = json.loads(rest)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v
        except ValueError:
            pass
    return None


def _parse_env(rest):
    """ENV K=V K2="V 2" or ENV K V."""
    words = shlex.split(rest)
    if words and "=" in words[0]:
        return dict(w.split("=", 1) for w in words if "=" in w)
    if words:
        return {words[0]: rest[len(words[0]):].strip()}
    return {}


class ImageStore:
    def __init__(self, world, build_run="exec"):
        self.world = world
        self.build_run = build_run
        self.by_id = {}
        self.by_key = {}

    def key(self, req):
        img = req.image
        d = {"commands": list(img.dockerfile_commands),
             "bases": [[b.image_id, b.docker_tag] for b in img.base_images],
             "context": [[c.filename, hashlib.sha256(c.data).hexdigest()] for c in img.context_files],
             "secrets": list(img.secret_ids), "args": dict(img.build_args),
             "builder": req.builder_version, "gpu": img.gpu_config.gpu_type}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def check(self, req):
        """Returns (base image or None, error message or None) for a layer definition."""
        cmds = list(req.image.dockerfile_commands)
        if not cmds:
            return None, "the image has no dockerfile_commands (the first must be FROM)"
        word, rest = _split_instruction(cmds[0])
        if word != "FROM" or not rest:
            return None, "the first Dockerfile command must be FROM, got %r" % cmds[0]
        tag = rest.split()[0]
        bases = {b.docker_tag: b.image_id for b in req.image.base_images}
        if tag in bases:
            base = self.by_id.get(bases[tag])
            if base is None:
                return None, "base image %s (tag %r) does not exist" % (bases[tag], tag)
            if base.status != SUCCESS:
                return None, "base image %s has not been built successfully" % base.id
            return base, None
        if tag == "base":
            return None, "FROM base needs base_images with docker_tag \"base\""
        return None, None

    def get_or_create(self, req, secret_env):
        """The image for this layer definition: cached, or new and building."""
        base, err = self.check(req)
        if err:
            return None, err
        key = self.key(req)
        img = self.by_key.get(key)
        if img and not req.force_build and img.status != FAILURE:
            return img, None
        img = Image(new_id("im-"), req.image.dockerfile_commands, base)
        self.by_id[img.id] = img
        self.by_key[key] = img
        steps = list(req.image.dockerfile_commands)[1:]
        args = dict(req.image.build_args)
        if any(_split_instruction(s)[0] == "RUN" for s in steps):
            img.task = asyncio.ensure_future(self._build(img, steps, secret_env, args))
        else:
            self._apply_all(img, steps, args)
            img.builds += 1
            img.done(SUCCESS)
        return img, None

    def _apply(self, img, word, rest, args):
        """Applies a non-RUN instruction to the image; returns a note for the log."""
        if word == "ENV":
            img.env.update(_parse_env(rest))
        elif word == "WORKDIR":
            wd = rest if rest.startswith("/") else os.path.join(img.workdir or "/", rest)
            img.workdir = box.clean_abs(wd) or img.workdir
        elif word == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip())
        elif word in ("CMD", "ENTRYPOINT"):
            img.cmd = _json_list(rest) or ["/bin/sh", "-c", rest]
        else:
            return "(%s is not modelled by the stand-in: ignored)\n" % word
        return ""

    def _apply_all(self, img, steps, args):
        for i, line in enumerate(steps, 1):
            word, rest = _split_instruction(line)
            img.log("=> Step %d: %s\n" % (i, line), INFO)
            img.log(self._apply(img, word, rest, args), INFO)

    async def _build(self, img, steps, secret_env, args):
        t0 = time.monotonic()
        img.builds += 1
        img.log("Building image %s\n\n=> Step 0: %s\n" % (img.id, img.commands[0]), INFO)
        scratch = os.path.join(self.world.state_dir, "builds", img.id)
        try:
            for i, line in enumerate(steps, 1):
                word, rest = _split_instruction(line)
                img.log("\n=> Step %d: %s\n" % (i, line), INFO)
                if word != "RUN":
                    img.log(self._apply(img, word, rest, args), INFO)
                    continue
                if self.build_run == "skip":
                    img.log("(RUN not executed: the stand-in runs with --build-run skip)\n", INFO)
                    continue
                argv = _json_list(rest) or ["/bin/sh", "-c", rest]
                code = await self._run(img, scratch, argv, dict(secret_env, **args))
                if code != 0:
                    msg = ("Terminating task due to error: failed to run builder command %s: "
                           "container exit status: %d" % (json.dumps(rest), code))
                    img.log(msg + "\n", STDERR)
                    img.done(FAILURE, "Image build for %s failed: the RUN command %s exited with "
                                      "status %d. See the build logs for more details."
                             % (img.id, json.dumps(rest), code))
                    return
            img.log("\nSaving image...\nImage saved, took 0.01s\n\nBuilt image %s in %.2fs\n"
                    % (img.id, time.monotonic() - t0), INFO)
            img.done(SUCCESS)
        except asyncio.CancelledError:
            img.done(FAILURE, "the image build was cancelled (the stand-in is stopping)")
            raise
        except Exception as exc:                           # noqa: BLE001 - reported as the result
            img.done(FAILURE, "the stand-in could not run the build: %r" % (exc,))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _run(self, img, scratch, argv, extra_env):
        for sub in ("app", "tmp", "home"):
            os.makedirs(os.path.join(scratch, sub), exist_ok=True)
        binds = [("/app", os.path.join(scratch, "app"), False),
                 ("/tmp", os.path.join(scratch, "tmp"), False),
                 ("/root", os.path.join(scratch, "home"), False)]
        cwd = img.workdir or "/"
        if cwd != "/" and not any(cwd == b[0] or cwd.startswith(b[0] + "/") for b in binds):
            if box.in_system(cwd):
                cwd = "/"
            else:
                os.makedirs(os.path.join(scratch, "work"), exist_ok=True)
                binds.append((cwd, os.path.join(scratch, "work"), False))
        env = {"PATH": box.PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        env.update(img.env)
        env.update(extra_env)
        cmd = box.command(self.world.bwrap, self.world.host, binds, True, cwd, argv)
        proc = await box.spawn(cmd, env, stdin=False, stdout=True, stderr="stdout")
        img.proc = proc
        try:
            while True:
                chunk = await proc.stdout.read(65536)
                if not chunk:
                    break
                img.log(chunk.decode("utf-8", "replace"), STDOUT)
            return await proc.wait()
        finally:
            if proc.returncode is None:
                box.kill_tree(proc.pid)
                await proc.wait()
            img.proc = None

    async def join(self, img, last_entry, timeout):
        """Yields ("log", entry_no, data, fd) after last_entry and then ("result",) once the
        build is over, or stops when timeout passes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pos = last_entry
        while True:
            ev = img._changed
            while pos < len(img.logs):
                data, fd = img.logs[pos]
                pos += 1
                yield ("log", pos, data, fd)
            if img.status != RUNNING:
                yield ("result",)
                return
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(ev.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def shutdown(self):
        for img in self.by_id.values():
            if img.proc and img.proc.returncode is None:
                box.kill_tree(img.proc.pid)
            if img.task and not img.task.done():
                img.task.cancel()
        tasks = [i.task for i in self.by_id.values() if i.task]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
