-- The live progress board of batches.
local T = require "runbox.testing"
local board = require "runbox.board"
local sched = require "runbox.sched"

T.test("the board shows counts, each running task's phase and latest line, and an ETA", function()
  local b = board.new{total = 4, width = 200, out = function() end}
  local fake = {phase_name = "agent", latest_line = function() return "compiling module 3" end}
  b:started("task-a", fake)
  b:started("task-b", {phase_name = "eval"})
  b:finished("task-c", true)
  local lines = b:text()
  T.match(lines[1], "1/4 done  2 running  0 failed  1 queued")
  T.match(lines[1], "ETA %d+:%d%d")
  T.match(lines[2], "task%-a%s+agent%s+%d+:%d%d  compiling module 3")
  T.match(lines[3], "task%-b%s+eval")
  b:finished("task-a", false)
  T.match(b:text()[1], "2/4 done  1 running  1 failed  1 queued")
end)

T.test("drawing moves the cursor back over the previous board and prints notes above it", function()
  local out = {}
  local b = board.new{total = 2, width = 80, out = function(s) out[#out + 1] = s end}
  b:started("t1", {phase_name = "setup"})
  b:draw()
  b:finished("t1", true, "t1: completed score 100%")
  b:draw()
  T.ok(not out[1]:find("\27%["), "the first draw has nothing to erase")
  T.match(out[2], "^\27%[2A\r\27%[J")
  T.match(out[2], "t1: completed score 100%%\n")
end)

T.test("long lines are clipped to the terminal width", function()
  local b = board.new{total = 1, width = 40, out = function() end}
  b:started("a-task-with-a-very-long-name-indeed", {phase_name = "agent", latest_line = function() return ("x"):rep(200) end})
  for _, l in ipairs(b:text()) do if not l:find("^runbox batch") then T.ok(utf8.len(l) <= 40, l) end end
end)

T.test("start redraws periodically until stop", function()
  local n = 0
  local b = board.new{total = 1, out = function() n = n + 1 end}
  b:start(0.02)
  sched.sleep(0.1)
  b:stop()
  T.ok(n >= 3, "drew " .. n .. " times")
end)

T.run()
