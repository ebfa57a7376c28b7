-- runbox bench/batch_run.lua CONFIG STATS_FILE [MAX_PARALLEL [AGENT]]
-- Runs the batch of CONFIG as `runbox parallel` does (same batch.run call), then appends one JSON
-- line to STATS_FILE with this process's OWN cpu time (utime + stime from /proc/self/stat, which
-- leave out its children), its peak resident memory (VmHWM)
-- and the batch's outcome. CLK_TCK comes from the environment (bench/batch.sh sets it from getconf).
local batch = require "runbox.batch"
local json = require "runbox.json"
local fs = require "runbox.fs"
local sched = require "runbox.sched"

local config, stats_file = arg[1], arg[2]
local max_parallel = tonumber(arg[3] or "16")
local agent = arg[4] or "cmd:true"
if not config or not stats_file then
  io.stderr:write("usage: runbox bench/batch_run.lua CONFIG STATS_FILE [MAX_PARALLEL [AGENT]]\n")
  os.exit(2)
end
local ticks = tonumber(os.getenv("CLK_TCK") or "100")

local measure = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench") .. "/measure.lua")

local function cpu()
  local utime, stime, cutime, cstime = measure.cpu_ticks()
  return {utime = utime, stime = stime, cutime = cutime, cstime = cstime}
end
local status_kb = measure.status_kb

local t0 = sched.now()
local before = cpu()
local cfg = assert(batch.load_config(config))
local result = assert(batch.run{config = cfg, max_parallel = max_parallel, agent = agent,
                                on_line = function() end})
local wall = sched.now() - t0
local c = cpu()
local statuses = {}
for _, r in ipairs(result.records) do
  local s = r.status or "?"
  statuses[s] = (statuses[s] or 0) + 1
end
local n = #result.records
local own_ms = (c.utime + c.stime - before.utime - before.stime) * 1000 / ticks
local line = {
  runs = n, wall_s = wall, max_parallel = max_parallel, agent = agent,
  utime_ms = c.utime * 1000 / ticks, stime_ms = c.stime * 1000 / ticks,
  own_cpu_ms = (c.utime + c.stime) * 1000 / ticks,            -- whole process, start-up included
  batch_cpu_ms = own_ms,                                        -- batch.run alone
  own_cpu_ms_per_run = (c.utime + c.stime) * 1000 / ticks / math.max(n, 1),
  -- waited-for children only: most CPU of the processes inside bwrap sandboxes is not in it
  children_cpu_ms = (c.cutime + c.cstime) * 1000 / ticks,
  peak_rss_mb = status_kb("VmHWM") / 1024, statuses = statuses, batch_dir = result.dir,
}
assert(fs.append(stats_file, json.encode(line) .. "\n"))
io.stderr:write(("batch_run: %d runs in %.1fs; runbox cpu %.0f ms (%.2f ms/run), peak %.1f MB\n")
                :format(n, wall, line.own_cpu_ms, line.own_cpu_ms_per_run, line.peak_rss_mb))
