-- Several test scripts through one command in the sandbox: a small Python program there runs
-- pytest on each script in turn, with the arguments, environment, working folder and time limit
-- that one command per script would have, and reports each result as a JSON line when it ends.
-- A sandbox process costs a start (a bwrap, or a remote exec's round trips); a run has two to four
-- scripts. Python is there anyway: pytest needs it.
local sched = require "runbox.sched"
local json = require "runbox.json"
local util = require "runbox.util"
local errors = require "runbox.errors"

local M = {}

-- Runs as `python3 -I -c RUNNER SPEC` (-I: the repository's files cannot stand in for the
-- modules it imports). Per script: pytest in a session of its own; at the time limit SIGTERM to
-- its group, SIGKILL after the grace; what it left in its group is killed when it ends. Output
-- goes to files in the sandbox's /tmp, and the last `limit` bytes of each stream are reported.
local RUNNER = [[
import base64, json, os, signal, subprocess, sys, tempfile, time
spec = json.loads(sys.argv[1])

def kill(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass

def end_of(f):
    size = f.seek(0, 2)
    keep = min(size, spec["limit"])
    f.seek(size - keep)
    return base64.b64encode(f.read()).decode("ascii"), size - keep

def report(ev):
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()

for i, path in enumerate(spec["scripts"]):
    report({"start": i})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(spec["argv"] + [path], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True)
        except OSError as e:
            report({"done": i, "code": 127, "how": "exit", "secs": 0, "out": "", "out_dropped": 0,
                    "err": base64.b64encode(str(e).encode()).decode("ascii"), "err_dropped": 0})
            continue
        how = "exit"
        try:
            p.wait(spec["timeout"])
        except subprocess.TimeoutExpired:
            how = "timeout"
            kill(p.pid, signal.SIGTERM)
            try:
                p.wait(spec["grace"])
            except subprocess.TimeoutExpired:
                kill(p.pid, signal.SIGKILL)
                p.wait()
        secs = time.monotonic() - t0
        kill(p.pid, signal.SIGKILL)
        code = p.returncode
        if code < 0:
            code = 128 - code
            if how == "exit":
                how = "signal"
        o, od = end_of(out)
        e, ed = end_of(err)
        report({"done": i, "code": code, "how": how, "secs": secs, "out": o, "out_dropped": od,
                "err": e, "err_dropped": ed})
]]

M.GRACE = 2   -- seconds from SIGTERM to SIGKILL at a script's time limit (proc.spawn's default)

-- Runs scripts (a list of test script entries with .path) through one sandbox command. argv is
-- pytest's command without the script path; o: repo, env, timeout, grace, output_limit. Calls
-- on_start(ts) as a script begins and on_end(ts, r) as it ends, r = {code, how, stdout, stderr,
-- stdout_dropped, stderr_dropped, secs}. Returns nil when every script ended, else why the others
-- did not (the runner could not start, or stopped early).
function M.run(sb, scripts, argv, o, on_start, on_end)
  local paths = {}
  for i, ts in ipairs(scripts) do paths[i] = ts.path end
  local spec = json.encode{argv = argv, scripts = paths, timeout = o.timeout, grace = M.GRACE,
                           limit = o.output_limit}
  local limit = #scripts * (o.timeout + M.GRACE + 5)
  local p, err = sb:exec({argv[1], "-I", "-c", RUNNER, spec}, {cwd = o.repo, env = o.env, timeout = limit})
  if not p then return "could not start pytest: " .. errors.message(err) end
  local ended = 0
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local guard <close> = setmetatable({}, {__close = function()
    errtask:cancel("runner ended")
    pcall(p.close, p)
  end})
  local ok, rerr = sched.timeout(limit + o.grace, function()
    for line in p:lines("stdout") do
      local ev = json.decode(line)
      local ts = type(ev) == "table" and scripts[(tonumber(ev.start or ev.done) or -1) + 1]
      if ts and ev.start then
        on_start(ts)
      elseif ts then
        ended = ended + 1
        on_end(ts, {code = ev.code, how = ev.how, secs = ev.secs,
                    stdout = util.base64_decode(ev.out) or "", stdout_dropped = ev.out_dropped,
                    stderr = util.base64_decode(ev.err) or "", stderr_dropped = ev.err_dropped})
      end
    end
    return p:wait()
  end)
  if not ok then pcall(p.kill, p, 9) end
  if ended == #paths then return nil end
  -- the runner ended before the last script did: why, in its own words
  local _, eok, stderr = sched.timeout(ok and 5 or 1, errtask.wait, errtask)
  local why = not ok and ("the test runner was stopped after %gs (%s)"):format(limit + o.grace, errors.message(rerr))
              or "the test runner ended early"
  if eok and type(stderr) == "string" and stderr:match("%S") then why = why .. ": " .. (stderr:gsub("%s+$", "")) end
  return why
end

return M
