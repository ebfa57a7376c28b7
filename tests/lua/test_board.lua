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

T.test("runbox parallel on a terminal draws the board; off a terminal it prints lines", T.with_temp_dir(function(dir)
  local fs, proc = require "runbox.fs", require "runbox.proc"
  local src = os.getenv("RUNBOX_SOURCE") or assert(fs.realpath("."))
  assert(fs.write(dir .. "/p.yaml", ("agents: {agent: oracle, max_parallel: 2}\n"
    .. "datasets: {ex: {path: %s/examples/tasks, tasks: [fix-median-bug, add-slugify]}}\n"
    .. "output: {results_dir: %s/results}\n"):format(src, dir)))
  local bin = T.runbox_bin()
  local apply = dofile(src .. "/tests/helpers/reference_patch.lua")(src .. "/examples/tasks")
  local r = assert(proc.run{"script", "-qec", bin .. " parallel p.yaml --agent 'cmd:sleep 1.5; " .. apply .. "'",
                            dir .. "/typescript", cwd = dir, timeout = 120,
                            env = {RUNBOX_SANDBOX_REGISTRY = dir .. "/registry"}})
  T.eq(r.code, 0, r.stdout .. r.stderr)
  local screen = assert(fs.read(dir .. "/typescript"))
  T.match(screen, "runbox batch  2/2 done")
  T.match(screen, "\27%[%dA\r\27%[J", "redrawn in place")
  T.match(screen, "agent%s+%d:%d%d")
  local plain = assert(proc.run{bin, "parallel", "p.yaml", cwd = dir, timeout = 120,
                                env = {RUNBOX_SANDBOX_REGISTRY = dir .. "/registry"}})
  T.eq(plain.code, 0, plain.stderr)
  T.ok(not plain.stderr:find("\27%["), "no cursor codes off a terminal")
  T.match(plain.stderr, "%[2/2%] ")
end), {timeout = 120})

T.run()
