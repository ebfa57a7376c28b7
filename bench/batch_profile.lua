-- runbox bench/batch_profile.lua CONFIG [MAX_PARALLEL [WHAT-IF...]]
-- Where runbox's own CPU goes in a batch: wraps the module functions a run calls and adds up the
-- process CPU time (os.clock: this process only, not its children) spent inside each, printed per
-- run as inclusive and self time (self = minus the wrapped functions called from inside).
-- Task switches are followed (the scheduler's resume is hooked), so a function that waits is not
-- charged for what other tasks do meanwhile; helper tasks (pipe pumps, process reapers) show up as
-- "task FILE:LINE" of the function they run. The wrappers add about 2 ms per run.
-- WHAT-IF arguments change runbox for this process only, to measure what a change would save:
--   nofsync   fs.write_atomic without its two fsyncs, the journal's fs.append without fsync
--   nometer   the cmd agent without the metering proxy (uses_model = false)
--   mkdir     fs.mkdir_p returns at once when the folder exists (instead of walking from /)
local config = arg[1]
if not config then
  io.stderr:write("usage: runbox bench/batch_profile.lua CONFIG [MAX_PARALLEL [nofsync] [nometer] [mkdir]]\n")
  os.exit(2)
end
local max_parallel = tonumber(arg[2] or "1")
local whatif = {}
for i = 3, #arg do whatif[arg[i]] = true end

local fs = require "runbox.fs"
local sched = require "runbox.sched"
local clock = os.clock
local stats = {}          -- label -> {calls, incl, self}
local stack = setmetatable({}, {__mode = "k"})   -- coroutine -> its open frames {label, self, incl}
local outside = 0         -- CPU charged to no wrapped function (scheduler, batch loop, helper tasks)
local last = clock()

-- Charges the CPU since the last event to coroutine co: self time to its innermost open frame,
-- inclusive time to every open frame.
local function charge(co)
  local now = clock()
  local d = now - last
  last = now
  local s = stack[co]
  local n = s and #s or 0
  if n == 0 then outside = outside + d; return end
  s[n].self = s[n].self + d
  for i = 1, n do s[i].incl = s[i].incl + d end
end

-- Task switches are events too: the scheduler's resume is wrapped to charge before and after.
local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/measure.lua")
local function hook_resume()
  local function after(co, ...) charge(co); return ... end
  measure.wrap_resume(sched, function(orig)
    return function(co, ...)
      charge(coroutine.running())
      return after(co, orig(co, ...))
    end
  end)
end
hook_resume()

local function finish(s, fr, ok, ...)
  charge(coroutine.running())
  s[#s] = nil
  local st = stats[fr.label]
  if not st then st = {calls = 0, incl = 0, self = 0}; stats[fr.label] = st end
  st.calls, st.incl, st.self = st.calls + 1, st.incl + fr.incl, st.self + fr.self
  if not ok then error((...), 0) end
  return ...
end

local function wrap(tbl, name, label)
  local f = tbl[name]
  assert(type(f) == "function", label)
  tbl[name] = function(...)
    local co = coroutine.running()
    charge(co)
    local s = stack[co]
    if not s then s = {}; stack[co] = s end
    local fr = {label = label, self = 0, incl = 0}
    s[#s + 1] = fr
    return finish(s, fr, pcall(f, ...))
  end
end

local function wrap_all(tbl, prefix, names)
  for _, n in ipairs(names) do wrap(tbl, n, prefix .. n) end
end

-- Helper tasks are named after the function they run (file:line), so their CPU is not "outside".
local spawn = sched.spawn
sched.spawn = function(fn, ...)
  local info = debug.getinfo(fn, "S")
  local holder = {fn = fn}
  wrap(holder, "fn", ("task %s:%d"):format(info.short_src:match("[^/]*/?[^/]+$"), info.linedefined))
  return spawn(holder.fn, ...)
end

if whatif.nofsync then
  local write = fs.write
  fs.write_atomic = function(path, data, opts)
    local tmp = path .. ".tmp-prof"
    local ok, err = write(tmp, data, opts)
    if not ok then return nil, err end
    return fs.rename(tmp, path)
  end
  local append = fs.append
  fs.append = function(path, data, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.fsync = nil
    return append(path, data, o)
  end
end

if whatif.mkdir then
  local mkdir_p, stat = fs.mkdir_p, fs.stat
  fs.mkdir_p = function(path, mode)
    local st = stat(path)
    if st and st.type == "dir" then return true end
    return mkdir_p(path, mode)
  end
end

local agent = require "runbox.agent"
local agent_spec = "cmd:true"
if whatif.nometer then
  local command = agent.command
  agent.command = function(line)
    local a = command(line)
    a.uses_model = false
    return a
  end
end

-- the module functions of one run, outermost first
local task = require "runbox.task"
local json = require "runbox.json"
local util = require "runbox.util"
local log = require "runbox.log"
local meter = require "runbox.meter"
local eval = require "runbox.eval"
local report = require "runbox.report"
local proc = require "runbox.proc"
local sandbox = require "runbox.sandbox"
local runner = require "runbox.runner"
local batch = require "runbox.batch"
wrap(runner, "run", "runner.run")
wrap_all(task, "task.", {"load", "prepare", "clone", "discover"})
wrap_all(json, "json.", {"encode_file", "decode_file", "encode", "decode", "pretty"})
wrap_all(fs, "fs.", {"write_atomic", "write", "append", "mkdir_p", "realpath", "copy_file", "read", "list",
                     "remove", "remove_tree", "rename", "exists", "stat", "lstat"})
wrap_all(util, "util.", {"run_id", "iso8601"})
wrap_all(log, "log.", {"sink", "pipe"})
wrap_all(meter, "meter.", {"start"})
wrap_all(eval, "eval.", {"run_tests", "score"})
wrap_all(report, "report.", {"markdown", "evaluation_json", "test_output", "results_block", "record"})
wrap_all(proc, "proc.", {"spawn", "run"})
local backend = sandbox.get("local")
wrap_all(backend, "sandbox.", {"create"})
-- the sandbox and process methods live in metatables: reach them through one object each
do
  local sb = assert(backend.create{})
  local SB = getmetatable(sb)
  wrap_all(SB, "sb:", {"exec", "put_dir", "put_tar", "get_tar", "terminate"})
  sb:destroy()
  local p = assert(proc.spawn{"true"})
  p:wait()
  local P = getmetatable(p)
  local names = {}
  for k, v in pairs(P) do
    if type(v) == "function" and k:sub(1, 2) ~= "__" then names[#names + 1] = k end
  end
  table.sort(names)
  wrap_all(P, "proc:", names)
  local Meter = getmetatable(assert(meter.start{upstream = "http://127.0.0.1:9"}))
  wrap_all(Meter, "meter:", {"close"})
  Meter.__close = Meter.close
end
for k in pairs(stats) do stats[k] = nil end   -- the set-up above does not count
charge(coroutine.running())
outside = 0

local cfg = assert(batch.load_config(config))
local c0 = clock()
local result = assert(batch.run{config = cfg, max_parallel = max_parallel, agent = agent_spec,
                                on_line = function() end})
charge(coroutine.running())
local total = clock() - c0
local n = #result.records

local rows = {}
local selfsum = 0
for label, st in pairs(stats) do
  rows[#rows + 1] = {label = label, calls = st.calls, incl = st.incl, self = st.self}
  selfsum = selfsum + st.self
end
table.sort(rows, function(a, b) return a.self > b.self end)
print(("batch of %d runs, %d at a time%s: runbox CPU %.1f ms, %.2f ms per run")
      :format(n, max_parallel, next(whatif) and (", what-if: " .. table.concat(arg, " ", 3)) or "",
              total * 1000, total * 1000 / n))
print()
print("| function | calls per run | self ms per run | inclusive ms per run |")
print("|---|---|---|---|")
for _, r in ipairs(rows) do
  if r.self * 1000 / n >= 0.05 or r.incl * 1000 / n >= 0.2 then
    print(("| `%s` | %.1f | %.2f | %.2f |"):format(r.label, r.calls / n, r.self * 1000 / n, r.incl * 1000 / n))
  end
end
print(("| (outside every wrapped function: batch loop, scheduler, helper tasks) | | %.2f | |")
      :format(outside * 1000 / n))
print(("(self times add up to %.2f ms per run)"):format((selfsum + outside) * 1000 / n))
