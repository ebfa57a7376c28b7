-- What the Lua benchmarks measure of their own process, shared by them:
--   local measure = dofile(BENCH_DIR .. "/measure.lua")
--   measure.cpu_ticks() -> utime, stime, cutime, cstime (clock ticks, /proc/self/stat)
--   measure.status_kb("VmHWM")
--   measure.wrap_resume(sched, function(orig) return function(co, ...) ... end end)
local fs = require "runbox.fs"

local M = {}

-- Fields 14..17 of /proc/self/stat. The command name (field 2) is in parentheses and may hold
-- spaces: the fields are counted after its ')'; f[1] is field 3.
function M.cpu_ticks()
  local s = assert(fs.read("/proc/self/stat"))
  local f = {}
  for w in s:match("^.*%) (.*)$"):gmatch("%S+") do f[#f + 1] = w end
  return tonumber(f[12]), tonumber(f[13]), tonumber(f[14]), tonumber(f[15])
end

function M.status_kb(key)
  local s = assert(fs.read("/proc/self/status"))
  return tonumber(s:match("\n" .. key .. ":%s+(%d+) kB"))
end

-- The scheduler resumes every task with a local co_resume: found among the upvalues of its
-- functions and replaced by make(orig), so a benchmark can charge CPU to the resumed task.
function M.wrap_resume(sched, make)
  local seen = {}
  local function search(f)
    if seen[f] then return nil end
    seen[f] = true
    for i = 1, 255 do
      local name, v = debug.getupvalue(f, i)
      if not name then break end
      if name == "co_resume" then return f, i, v end
      if type(v) == "function" then
        local g, j, w = search(v)
        if g then return g, j, w end
      end
    end
  end
  for _, f in pairs(sched) do
    if type(f) == "function" then
      local g, i, orig = search(f)
      if g then
        debug.setupvalue(g, i, make(orig))
        return
      end
    end
  end
  error("the scheduler's co_resume was not found")
end

return M
