-- The live progress board of a batch on a terminal: counts, elapsed time, ETA, and one line per
-- running task with its phase and its agent's latest output line. Redrawn in place about once a
-- second; off a terminal, batches print one line per event instead.
local sched = require "runbox.sched"

local M = {}
local Board = {}
Board.__index = Board

local function clip(s, n)
  s = tostring(s or ""):gsub("[%c]", " ")
  if #s > n then return s:sub(1, n - 1) .. "…" end
  return s
end

local function clock(sec)
  sec = math.floor(sec + 0.5)
  return ("%d:%02d"):format(sec // 60, sec % 60)
end

-- board.new{total, width (columns, default $COLUMNS or 100), out (a function(text))}
function M.new(opts)
  return setmetatable({total = opts.total, width = opts.width or tonumber(os.getenv("COLUMNS")) or 100,
                       out = opts.out or function(s) io.stderr:write(s) end, running = {},
                       done = 0, failed = 0, lines = 0, t0 = sched.now(), notes = {}}, Board)
end

function Board:started(name, run) self.running[name] = {run = run, since = sched.now()} end

function Board:finished(name, ok, note)
  self.running[name] = nil
  self.done = self.done + 1
  if not ok then self.failed = self.failed + 1 end
  if note then self.notes[#self.notes + 1] = note end
end

-- The board's text (without cursor movement), for tests and for drawing.
function Board:text()
  local elapsed = sched.now() - self.t0
  local n_running = 0
  for _ in pairs(self.running) do n_running = n_running + 1 end
  local eta = self.done > 0 and (elapsed / self.done) * (self.total - self.done) or nil
  local lines = {("runbox batch  %d/%d done  %d running  %d failed  %d queued  elapsed %s  ETA %s"):format(
    self.done, self.total, n_running, self.failed, self.total - self.done - n_running, clock(elapsed),
    eta and clock(eta) or "-")}
  local names = {}
  for name in pairs(self.running) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local r = self.running[name]
    local run = r.run
    local phase = run and run.phase_name or "queued"
    local last = run and run.latest_line and run:latest_line() or ""
    lines[#lines + 1] = clip(("  %-28s %-8s %6s  %s"):format(clip(name, 28), phase, clock(sched.now() - r.since), last), self.width)
  end
  return lines
end

-- Redraws in place: moves the cursor up over the previous board and clears below.
function Board:draw()
  local notes = self.notes
  self.notes = {}
  local buf = {}
  if self.lines > 0 then buf[#buf + 1] = ("\27[%dA\r\27[J"):format(self.lines) end
  for _, n in ipairs(notes) do buf[#buf + 1] = n .. "\n" end   -- finished tasks scroll up above the board
  local lines = self:text()
  buf[#buf + 1] = table.concat(lines, "\n") .. "\n"
  self.lines = #lines
  self.out(table.concat(buf))
end

-- Starts a task redrawing every `interval` seconds until stop() is called.
function Board:start(interval)
  self.task = sched.spawn(function()
    while true do
      self:draw()
      sched.sleep(interval or 1)
    end
  end)
  return self
end

function Board:stop()
  if self.task then self.task:cancel(); self.task:wait(); self.task = nil end
  self:draw()
end

return M
