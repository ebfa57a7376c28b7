-- MODAL_SERVER_URL=... MODAL_TOKEN_ID=... MODAL_TOKEN_SECRET=... runbox bench/modal_runbox.lua [N [BYTES]]
-- The runbox side of bench/modal.sh: N sandboxes at once (default 100), one task each: create,
-- one exec streaming BYTES of stdout (default 1 MiB) read chunk by chunk and counted, the exec's
-- exit, terminate. Prints one JSON line: this process's OWN cpu time (utime + stime of
-- /proc/self/stat: the stand-in server and the sandboxes are other processes, not counted), its
-- peak resident memory (VmHWM), the wall time of the N sandboxes, and the outcome.
-- CLK_TCK comes from the environment (bench/modal.sh sets it from getconf).
-- BENCH_PHASES=1 adds the process CPU spent in each phase (create, exec start, stream, wait,
-- terminate), charged per task: the scheduler's resume is wrapped, so a phase is charged only for
-- the time its own task runs, not for what other tasks do while it waits.
local modal = require "runbox.modal"
local sched = require "runbox.sched"
local json = require "runbox.json"

local N = tonumber(arg[1] or "100")
local BYTES = tonumber(arg[2] or "1048576")
local CMD = {"sh", "-c", ("head -c %d /dev/zero | tr '\\0' x"):format(BYTES)}
local ticks = tonumber(os.getenv("CLK_TCK") or "100")

local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/measure.lua")

-- utime and stime, in ms
local function cpu_ms()
  local utime, stime = measure.cpu_ticks()
  return utime * 1000 / ticks, stime * 1000 / ticks
end
local status_kb = measure.status_kb

---------------------------------------------------------------------------------------------------
-- optional per-phase CPU: os.clock() around every resume of a task, added to that task's phase

local phase_of, phase_cpu = setmetatable({}, {__mode = "k"}), {}

-- Adds the CPU of each resume of a task to that task's current phase.
local function hook_resume()
  local clock = os.clock
  local function after(co, t0, ...)
    local name = phase_of[co] or "other tasks"
    phase_cpu[name] = (phase_cpu[name] or 0) + clock() - t0
    return ...
  end
  measure.wrap_resume(sched, function(orig)
    return function(co, ...) return after(co, clock(), orig(co, ...)) end
  end)
end
if os.getenv("BENCH_PHASES") == "1" then hook_resume() end
local function phase(name) phase_of[coroutine.running()] = name end

---------------------------------------------------------------------------------------------------

-- when each step ended, seconds after the start, per sandbox: the timeline in the output
local STEPS = {"created", "exec_started", "first_byte", "read_all", "exited", "terminated"}
local stamps = {}
for _, k in ipairs(STEPS) do stamps[k] = {} end
local T0
local function stamp(k) table.insert(stamps[k], sched.now() - T0) end

local function one(c, image)
  phase("create")
  local sb, err = c:sandbox_create{image = image}
  if not sb then return nil, "create: " .. err.message end
  stamp("created")
  phase("exec")
  local p
  p, err = sb:exec(CMD)
  if not p then sb:terminate() return nil, "exec: " .. err.message end
  stamp("exec_started")
  phase("stream")
  local n = 0
  while true do
    local chunk, rerr = p:read()
    if rerr then sb:terminate() return nil, "read: " .. rerr.message end
    if not chunk then break end
    if n == 0 then stamp("first_byte") end
    n = n + #chunk
  end
  stamp("read_all")
  phase("wait")
  local code, how = p:wait()
  stamp("exited")
  phase("terminate")
  local ok, terr = sb:terminate()
  stamp("terminated")
  phase(nil)
  if n ~= BYTES then return nil, ("read %d bytes, expected %d"):format(n, BYTES) end
  if code ~= 0 then return nil, ("exec ended: %s %s"):format(tostring(code), tostring(how)) end
  if not ok then return nil, "terminate: " .. terr.message end
  return n
end

local c = assert(modal.client{app = "bench-modal"})
local image = assert(c:image{registry = "debian:bookworm-slim"})   -- built once, before the clock
local u0, s0 = cpu_ms()
local t0 = sched.now()
T0 = t0
local tasks = {}
for i = 1, N do tasks[i] = sched.spawn(one, c, image) end
local failures, bytes = {}, 0
for _, r in ipairs(sched.wait_all(tasks)) do
  if not r[1] then failures[#failures + 1] = tostring(r[2])
  elseif not r[2] then failures[#failures + 1] = r[3]
  else bytes = bytes + r[2] end
end
local wall = sched.now() - t0
local u1, s1 = cpu_ms()

local out = {
  side = "runbox", sandboxes = N, ok = N - #failures, bytes = bytes, wall_s = wall,
  cpu_ms = u1 + s1, user_ms = u1, sys_ms = s1,          -- the whole process, start-up included
  phase_cpu_ms = u1 + s1 - u0 - s0,                     -- the N sandboxes alone
  peak_rss_mb = status_kb("VmHWM") / 1024, failures = {table.unpack(failures, 1, math.min(#failures, 3))},
}
-- per step: the median and the last sandbox's time
local function median(v)
  table.sort(v)
  local n = #v
  if n == 0 then return nil end
  return n % 2 == 1 and v[(n + 1) // 2] or (v[n // 2] + v[n // 2 + 1]) / 2
end
out.timeline_s = {}
for _, k in ipairs(STEPS) do
  local m = median(stamps[k])          -- sorts the list: its last entry is then the latest
  out.timeline_s[k] = {median = m, last = stamps[k][#stamps[k]]}
end
if next(phase_cpu) then
  out.phases_ms = {}
  local sum = 0
  for k, v in pairs(phase_cpu) do out.phases_ms[k] = v * 1000; sum = sum + v * 1000 end
  out.phases_ms["outside tasks (event loop, C callbacks)"] = out.phase_cpu_ms - sum
end
print(json.encode(out))
os.exit(#failures == 0 and 0 or 1)
