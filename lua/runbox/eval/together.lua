-- Several test scripts through one command in the sandbox: a small Python program there runs
-- pytest on each script in turn, with the arguments, environment, working folder and time limit
-- that one command per script would have, and reports each result as a JSON line when it ends.
-- A sandbox process costs a start (a bwrap, or a remote exec's round trips); a run has two to four
-- scripts. Python is there anyway: pytest needs it.
local sched = require "runbox.sched"
local util = require "runbox.util"
local errors = require "runbox.errors"

local M = {}

-- Runs as `python3 -I -S -c RUNNER TIMEOUT GRACE LIMIT N ARGV... SCRIPT...` (-I: the
-- repository's files cannot stand in for the modules it imports; -S and only built-in modules: a
-- start costs about as much CPU as a bwrap, where subprocess, tempfile and json would triple it).
-- Per script: pytest in a session of its own; at the time limit SIGTERM to its group, SIGKILL after
-- the grace; what it left in its group is killed when it ends. Its output goes to unnamed files in
-- the sandbox's /tmp, and the last LIMIT bytes of each stream are reported, base64 ("-": none):
--   start I
--   done I CODE HOW SECONDS OUT_DROPPED ERR_DROPPED OUT ERR
local RUNNER = [[
import binascii, os, signal, sys, time
timeout, grace, limit, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
argv, scripts = sys.argv[5:5 + n], sys.argv[5 + n:]
tmp = os.environ.get("TMPDIR") or "/tmp"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])

def say(line):
    os.write(1, (line + "\n").encode())

def scratch(i):
    try:
        return os.open(tmp, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        name = "%s/.runbox-tests-%d-%d" % (tmp, os.getpid(), i)
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(name)
        return fd

def end_of(fd):
    size = os.lseek(fd, 0, 2)
    keep = min(size, limit)
    os.lseek(fd, size - keep, 0)
    data = b""
    while len(data) < keep:
        chunk = os.read(fd, keep - len(data))
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return (binascii.b2a_base64(data).decode().strip() or "-"), size - keep

def kill(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass

def wait(pid, until):
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        left = until - time.monotonic()
        if left <= 0:
            return None
        signal.sigtimedwait([signal.SIGCHLD], left)

for i, path in enumerate(scripts):
    say("start %d" % i)
    out, err = scratch(2 * i), scratch(2 * i + 1)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):   # ignored by Python, not by pytest's own start
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execvp(argv[0], argv + [path])
        except OSError as e:
            os.write(2, ("runbox: cannot run %s: %s\n" % (argv[0], e.strerror)).encode())
        os._exit(127)
    how = "exit"
    status = wait(pid, t0 + timeout)
    if status is None:
        how = "timeout"
        kill(pid, signal.SIGTERM)
        status = wait(pid, time.monotonic() + grace)
        if status is None:
            kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
    secs = time.monotonic() - t0
    kill(pid, signal.SIGKILL)
    if os.WIFSIGNALED(status):
        code = 128 + os.WTERMSIG(status)
        if how == "exit":
            how = "signal"
    else:
        code = os.WEXITSTATUS(status)
    o, od = end_of(out)
    e, ed = end_of(err)
    say("done %d %d %s %.3f %d %d %s %s" % (i, code, how, secs, od, ed, o, e))
]]

M.GRACE = 2   -- seconds from SIGTERM to SIGKILL at a script's time limit (proc.spawn's default)

-- Runs scripts (a list of test script entries with .path) through one sandbox command. argv is
-- pytest's command without the script path; o: repo, env, timeout, grace, output_limit. Calls
-- on_start(ts) as a script begins and on_end(ts, r) as it ends, r = {code, how, stdout, stderr,
-- stdout_dropped, stderr_dropped, secs}. Returns nil when every script ended, else why the others
-- did not (the runner could not start, or stopped early).
function M.run(sb, scripts, argv, o, on_start, on_end)
  local cmd = {argv[1], "-I", "-S", "-c", RUNNER, ("%.17g"):format(o.timeout), ("%.17g"):format(M.GRACE),
               tostring(math.floor(o.output_limit)), tostring(#argv)}
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  for _, ts in ipairs(scripts) do cmd[#cmd + 1] = ts.path end
  local limit = #scripts * (o.timeout + M.GRACE + 5)
  local p, err = sb:exec(cmd, {cwd = o.repo, env = o.env, timeout = limit})
  if not p then return "could not start pytest: " .. errors.message(err) end
  local ended = 0
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local guard <close> = setmetatable({}, {__close = function()
    errtask:cancel("runner ended")
    pcall(p.close, p)
  end})
  local function b64(s) return s == "-" and "" or util.base64_decode(s) or "" end
  local ok, rerr = sched.timeout(limit + o.grace, function()
    for line in p:lines("stdout") do
      -- positions, not captures of the rest: a done line carries up to twice output_limit of base64
      local kind, i, at = line:match("^(%a+) (%d+)()")
      local ts = scripts[(tonumber(i) or -1) + 1]
      if ts and kind == "start" then
        on_start(ts)
      elseif ts and kind == "done" then
        local code, how, secs, od, ed, from = line:match("^ (%d+) (%a+) ([%d.]+) (%d+) (%d+) ()", at)
        local gap = from and line:find(" ", from, true)
        if gap then
          ended = ended + 1
          on_end(ts, {code = tonumber(code), how = how, secs = tonumber(secs),
                      stdout = b64(line:sub(from, gap - 1)), stdout_dropped = tonumber(od),
                      stderr = b64(line:sub(gap + 1)), stderr_dropped = tonumber(ed)})
        end
      end
    end
    return p:wait()
  end)
  if not ok then pcall(p.kill, p, 9) end
  if ended == #scripts then return nil end
  -- the runner ended before the last script did: why, in its own words
  local _, eok, stderr = sched.timeout(ok and 5 or 1, errtask.wait, errtask)
  local why = not ok and ("the test runner was stopped after %gs (%s)"):format(limit + o.grace, errors.message(rerr))
              or "the test runner ended early"
  if eok and type(stderr) == "string" and stderr:match("%S") then why = why .. ": " .. (stderr:gsub("%s+$", "")) end
  return why
end

return M
