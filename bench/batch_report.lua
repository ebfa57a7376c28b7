-- runbox bench/batch_report.lua WORK_DIR
-- The figures of bench/batch.sh: wall times (walls.jsonl, written by batch.sh) with the ratio to the xargs
-- loop, runbox's own CPU per run and peak memory (stats.jsonl from bench/batch_run.lua), and a
-- check that both sides did the same work: per task and test script, the same pass/fail.
local json = require "runbox.json"
local fs = require "runbox.fs"

local W = assert(arg[1], "usage: runbox bench/batch_report.lua WORK_DIR")
local ntasks = #(fs.list(W .. "/tasks") or {})


-- wall times: walls.jsonl, one line per run of either side; machine CPU is the busy time of the
-- whole machine during the run (/proc/stat), so it includes anything else running then
local walls = {}
for line in (fs.read(W .. "/walls.jsonl") or ""):gmatch("[^\n]+") do
  local w = json.decode(line)
  walls[w.side] = walls[w.side] or {}
  table.insert(walls[w.side], w)
end
local function mean_sd(list)
  local sum = 0
  for _, w in ipairs(list) do sum = sum + w.wall_s end
  local mean = sum / #list
  local var = 0
  for _, w in ipairs(list) do var = var + (w.wall_s - mean) ^ 2 end
  return mean, #list > 1 and math.sqrt(var / (#list - 1)) or 0
end
local base = walls.xargs and mean_sd(walls.xargs)
local rb_mean = walls.runbox and mean_sd(walls.runbox)
if next(walls) then
  print("| command | runs (s) | mean (s) | ± (s) | ratio to xargs | machine CPU per task (ms) |")
  print("|---|---|---|---|---|---|")
  for _, side in ipairs{"xargs", "runbox"} do
    local list = walls[side]
    if list then
      local each = {}
      for i, w in ipairs(list) do each[i] = ("%.1f"):format(w.wall_s) end
      local mean, sd = mean_sd(list)
      local busy = 0
      for _, w in ipairs(list) do busy = busy + (w.busy_s or 0) end
      print(("| %s | %s | %.1f | %.1f | %s | %.0f |"):format(side == "xargs" and "`xargs -P` loop (batch_baseline.sh)" or "`runbox parallel`",
                                                   table.concat(each, ", "), mean, sd,
                                                   base and ("%.3fx"):format(mean / base) or "-",
                                                   busy * 1000 / #list / ntasks))
    end
  end
  print()
end

-- runbox's own cpu and memory, per batch run
local last
local text = fs.read(W .. "/stats.jsonl")
if text then
  print("| runbox batch | runs | wall (s) | own CPU (ms) | of which sys (ms) | own CPU per run (ms) | peak RSS (MB) | statuses |")
  print("|---|---|---|---|---|---|---|---|")
  local sum, n, peak = 0, 0, 0
  for line in text:gmatch("[^\n]+") do
    local s = json.decode(line)
    n = n + 1
    sum = sum + s.own_cpu_ms_per_run
    peak = math.max(peak, s.peak_rss_mb)
    local st = {}
    for k, v in pairs(s.statuses) do st[#st + 1] = k .. " " .. v end
    table.sort(st)
    print(("| %d | %d | %.1f | %.0f | %.0f | %.2f | %.1f | %s |"):format(n, s.runs, s.wall_s, s.own_cpu_ms,
                                                                     s.stime_ms, s.own_cpu_ms_per_run,
                                                                     s.peak_rss_mb, table.concat(st, ", ")))
    last = s
  end
  print()
  print(("runbox own CPU per run: %.2f ms (target < 5 ms: %s); peak RSS %.1f MB (target < 60 MB: %s)")
        :format(sum / n, sum / n < 5 and "met" or "MISSED", peak, peak < 60 and "met" or "MISSED"))
  if base and rb_mean then
    local ratio = rb_mean / base
    print(("wall time: %.3fx the xargs loop (target <= 1.1x: %s)"):format(ratio, ratio <= 1.1 and "met" or "MISSED"))
  end
end

-- same work: the last runbox batch's test results against the xargs loop's results.txt files
local xout = walls.xargs and walls.xargs[#walls.xargs].out
if last and xout and fs.exists(xout) then
  local rb = {}
  for line in (fs.read(last.batch_dir .. "/journal.jsonl") or ""):gmatch("[^\n]+") do
    local rec = json.decode(line)
    if rec and rec.event == "finish" and rec.final then
      local r = {}
      for path, res in pairs(type(rec.test_results) == "table" and rec.test_results or {}) do r[path] = res.success end
      rb[rec.task] = r
    end
  end
  local tasks, scripts, passed, differ = 0, 0, 0, {}
  for _, name in ipairs(fs.list(xout) or {}) do
    local res = fs.read(xout .. "/" .. name .. "/app/results.txt") or ""
    local mine = rb[name] or {}
    tasks = tasks + 1
    local seen = 0
    for code, path in res:gmatch("(%d+) ([^\n]+)") do
      seen = seen + 1
      scripts = scripts + 1
      local ok = code == "0"
      if ok then passed = passed + 1 end
      if mine[path] ~= ok then differ[#differ + 1] = ("%s %s: xargs %s, runbox %s"):format(name, path, ok, tostring(mine[path])) end
    end
    local count = 0
    for _ in pairs(mine) do count = count + 1 end
    if count ~= seen then differ[#differ + 1] = ("%s: %d test scripts run by xargs, %d by runbox"):format(name, seen, count) end
  end
  print(("same work: %d tasks, %d test scripts (%d passed) in the xargs loop; %d difference(s) from runbox")
        :format(tasks, scripts, passed, #differ))
  for i = 1, math.min(#differ, 10) do print("  " .. differ[i]) end
end
