-- Progress of a long transfer (an upload, a download): on a terminal one line redrawn in place
-- with a bar, bytes, rate and ETA; elsewhere (a log, CI) a plain line every `every` seconds and
-- one at the end, so a pipe is not flooded.
--
--   local bar = progress.new{label = "codex-installation", total = size}
--   bar:add(#chunk) ...                     -- or bar:set(done)
--   bar:finish()                            -- the final line, with the average rate
local sched = require "runbox.sched"

local M = {}
local Bar = {}
Bar.__index = Bar

-- 1536 -> "1.5 KiB"
function M.bytes(n)
  local units = {"B", "KiB", "MiB", "GiB", "TiB"}
  local i = 1
  while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
  if i == 1 then return ("%d B"):format(n) end
  return ("%.1f %s"):format(n, units[i])
end

-- 75 -> "1:15", 4000 -> "1:06:40"
function M.clock(sec)
  sec = math.floor(sec + 0.5)
  if sec >= 3600 then return ("%d:%02d:%02d"):format(sec // 3600, sec % 3600 // 60, sec % 60) end
  return ("%d:%02d"):format(sec // 60, sec % 60)
end

local function is_terminal()
  return require("runbox.c.log").isatty(2)
end

-- progress.new{label, total (bytes, may be nil when unknown), tty (default: stderr is a
-- terminal), every (seconds between plain lines, default 5), width (bar columns, default 24),
-- out (function(text), default stderr)}
function M.new(opts)
  if type(opts) ~= "table" then error("progress.new: options table expected", 2) end
  if opts.total ~= nil and (type(opts.total) ~= "number" or opts.total < 0) then
    error("progress.new: total must be a number of bytes", 2)
  end
  local tty = opts.tty
  if tty == nil then tty = is_terminal() end
  local now = sched.now()
  return setmetatable({label = opts.label or "transfer", total = opts.total, done = 0, tty = tty,
                       every = opts.every or 5, width = opts.width or 24, t0 = now, last = now,
                       out = opts.out or function(s) io.stderr:write(s) end,
                       redraw = tty and 0.1 or nil}, Bar)
end

-- Bytes per second over the whole transfer so far.
function Bar:rate()
  local dt = sched.now() - self.t0
  return dt > 0 and self.done / dt or 0
end

function Bar:line()
  local rate = self:rate()
  local parts = {self.label}
  if self.total and self.total > 0 then
    local frac = math.min(self.done / self.total, 1)
    if self.tty then
      local fill = math.floor(frac * self.width + 0.5)
      parts[#parts + 1] = "[" .. ("#"):rep(fill) .. ("-"):rep(self.width - fill) .. "]"
    end
    parts[#parts + 1] = ("%3d%%"):format(math.floor(frac * 100))
    parts[#parts + 1] = ("%s / %s"):format(M.bytes(self.done), M.bytes(self.total))
  else
    parts[#parts + 1] = M.bytes(self.done)
  end
  parts[#parts + 1] = M.bytes(rate) .. "/s"
  if self.finished then
    parts[#parts + 1] = "in " .. M.clock(sched.now() - self.t0)
  elseif self.total and rate > 0 then
    parts[#parts + 1] = "ETA " .. M.clock(math.max(self.total - self.done, 0) / rate)
  end
  return table.concat(parts, "  ")
end

function Bar:_show(force)
  local now = sched.now()
  local gap = self.tty and self.redraw or self.every
  if not force and now - self.last < gap then return end
  self.last = now
  if self.tty then self.out("\r\27[K" .. self:line() .. (self.finished and "\n" or ""))
  else self.out(self:line() .. "\n") end
end

function Bar:add(n)
  self.done = self.done + n
  self:_show(false)
end

function Bar:set(done)
  self.done = done
  self:_show(false)
end

-- The last line (average rate and duration). Idempotent.
function Bar:finish()
  if self.finished then return end
  self.finished = true
  self:_show(true)
end

return M
