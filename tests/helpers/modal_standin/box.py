"""bwrap process trees for sandboxes and image builds, as runbox's local backend makes them
(lua/runbox/sandbox/local.lua): the host's system folders read-only, private writable folders
bound where the sandbox expects them, nothing else of the host.

Every bwrap leads its own process group (start_new_session) and dies with this server
(--die-with-parent); its child is pid 1 of a new PID namespace, so killing the groups of bwrap
and of its child ends every process of the tree.
"""
import asyncio
import os
import shutil
import signal

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt", "var", "sys",
          "nix", "gnu", "snap"]
ROOT_SECRETS = ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
                "/etc/sudoers.d", "/etc/security/opasswd", "/etc/ssl/private", "/var/lib/docker",
                "/var/lib/containerd", "/var/lib/postgresql", "/var/lib/mysql", "/var/mail",
                "/var/spool/cron", "/var/log"]
HOSTNAME = "modal"


def find_bwrap():
    return os.environ.get("RUNBOX_BWRAP") or shutil.which("bwrap") or shutil.which("bwrap", path=PATH)


def in_system(path):
    """True when path lies in a host folder shown read-only (or is /)."""
    parts = [p for p in path.split("/") if p]
    return not parts or parts[0] in SYSTEM or parts[0] in ("proc", "dev", "run")


def clean_abs(path):
    """The absolute path without '.', '//' or a trailing '/'; None when relative or with '..'."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    parts = []
    for p in path.split("/"):
        if p == "..":
            return None
        if p and p != ".":
            parts.append(p)
    return "/" + "/".join(parts)


class Host:
    """The part of every command line that shows the host's system (worked out once)."""

    def __init__(self, empty_file):
        self.empty = empty_file
        args, shown = [], set()
        for name in SYSTEM:
            path = "/" + name
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
                shown.add(name)
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run", "--dir", "/home"]
        resolv = os.path.realpath("/etc/resolv.conf")
        if resolv != "/etc/resolv.conf" and resolv.split("/")[1] not in shown:
            args += ["--ro-bind", resolv, resolv]
        hide = ["/var/tmp"]
        if os.getuid() == 0:
            hide += ROOT_SECRETS
            try:
                hide += ["/etc/ssh/" + n for n in os.listdir("/etc/ssh")
                         if n.startswith("ssh_host_") and n.endswith("_key")]
            except OSError:
                pass
        for path in hide:
            top = path.split("/")[1]
            if top not in shown or not os.path.lexists(path) or os.path.islink(path):
                continue
            if os.path.isdir(path):
                args += ["--tmpfs", path]
            else:
                args += ["--ro-bind", self.empty, path]
        self.args = args


def command(bwrap, host, binds, network, cwd, argv):
    """The bwrap command line. binds: list of (inside, host_dir, read_only)."""
    args = [bwrap, "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", HOSTNAME]
    if not network:
        args.append("--unshare-net")
    args += host.args
    for inside, host_dir, ro in sorted(binds, key=lambda b: b[0].count("/")):
        args += ["--ro-bind" if ro else "--bind", host_dir, inside]
    args += ["--remount-ro", "/", "--chdir", cwd, "--"] + list(argv)
    return args


async def spawn(cmd, env, stdin=True, stdout=True, stderr="pipe", log=None):
    """Starts a bwrap command line in its own process group. stderr: "pipe", "stdout", "null".
    log: a file path that gets stdout and stderr instead."""
    pipe = asyncio.subprocess.PIPE
    err = {"pipe": pipe, "stdout": asyncio.subprocess.STDOUT, "null": asyncio.subprocess.DEVNULL}[stderr]
    out = pipe if stdout else asyncio.subprocess.DEVNULL
    logf = None
    if log:
        logf = open(log, "ab")
        out, err = logf, asyncio.subprocess.STDOUT
    try:
        return await asyncio.create_subprocess_exec(
            *cmd, stdin=pipe if stdin else asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
            env=env, start_new_session=True, close_fds=True, limit=1 << 20)
    finally:
        if logf:
            logf.close()


def kill_tree(pid):
    """SIGKILL to the process group of bwrap `pid` and to the groups of its children (the
    sandbox's pid 1 runs in a session of its own)."""
    groups = [pid]
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            groups += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
