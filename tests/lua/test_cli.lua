-- The runbox command line: exit statuses, error messages, signals and cleanup.
local T = require "runbox.testing"
local sched = require "runbox.sched"
local proc = require "runbox.proc"
local fs = require "runbox.fs"

local BIN = T.runbox_bin()
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))

local function write(name, text)
  local path = dir .. "/" .. name
  assert(fs.write(path, text))
  return path
end

local function runbox(args, opts)
  local cmd = {BIN}
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  for k, v in pairs(opts or {}) do cmd[k] = v end
  cmd.timeout = cmd.timeout or 30
  return assert(proc.run(cmd))
end

T.test("--version and --help", function()
  local r = runbox{"--version"}
  T.eq(r.code, 0)
  T.match(r.stdout, "^runbox %d+%.%d+%.%d+\n$")
  r = runbox{"--help"}
  T.eq(r.code, 0)
  T.match(r.stdout, "runbox SCRIPT%.lua")
  T.match(r.stdout, "stock recipes")
end)

T.test("usage errors exit 2 and name what was wrong", function()
  local r = runbox{}
  T.eq(r.code, 2)
  T.match(r.stderr, "usage")
  r = runbox{"--bogus"}
  T.eq(r.code, 2)
  T.match(r.stderr, "unknown flag '%-%-bogus'")
  r = runbox{dir .. "/missing.lua"}
  T.eq(r.code, 2)
  T.match(r.stderr, "missing%.lua' not found")
  r = runbox{"no-such-recipe"}
  T.eq(r.code, 2)
  T.match(r.stderr, "neither a script file nor a stock recipe")
  r = runbox{"-e"}
  T.eq(r.code, 2)
end)

T.test("-e runs code with arguments in ... and arg", function()
  local r = runbox{"-e", "print(select('#', ...), arg[1], arg[2])", "a", "b"}
  T.eq(r.code, 0)
  T.eq(r.stdout, "2\ta\tb\n")
end)

T.test("a script that raises exits 1 with the message and a traceback naming file and line", function()
  local path = write("boom.lua", "local function f()\n  error('kaboom')\nend\nf()\n")
  local r = runbox{path}
  T.eq(r.code, 1)
  T.match(r.stderr, "boom%.lua:2: kaboom")
  T.match(r.stderr, "stack traceback")
  T.match(r.stderr, "boom%.lua:4")
end)

T.test("a syntax error names the file and line", function()
  local path = write("syntax.lua", "local x = \nprint(\n")
  local r = runbox{path}
  T.eq(r.code, 1)
  T.match(r.stderr, "syntax%.lua:3:")
end)

T.test("os.exit runs cleanup first and keeps the status", function()
  local marker = dir .. "/exit-cleanup"
  local path = write("exit.lua", ([[
    local sched = require "runbox.sched"
    local g <close> = setmetatable({}, {__close = function()
      sched.sleep(0.05)
      local f = io.open(%q, "w") f:write("done") f:close()
    end})
    os.exit(7)
  ]]):format(marker))
  local r = runbox{path}
  T.eq(r.code, 7)
  T.eq(fs.read(marker), "done")
  T.eq(r.stderr, "")
end)

T.test("a deadlock is reported instead of hanging", function()
  local r = runbox{"-e", "require('runbox.sched').event():wait()"}
  T.eq(r.code, 1)
  T.match(r.stderr, "deadlock")
end)

-- A script that starts a child, records its pid, and has slow cleanup that must complete.
local function interruptible(marker, pidfile)
  return write("sig.lua", ([[
    local sched = require "runbox.sched"
    local proc = require "runbox.proc"
    local p <close> = assert(proc.spawn{"sleep", "60"})
    local f = io.open(%q, "w") f:write(p.pid) f:close()
    local g <close> = setmetatable({}, {__close = function()
      sched.sleep(0.5)
      local m = io.open(%q, "w") m:write("cleaned") m:close()
    end})
    print("ready")
    io.stdout:flush()
    sched.sleep(60)
  ]]):format(pidfile, marker))
end

local function start_and_wait_ready(path)
  local p = assert(proc.spawn{BIN, path, timeout = 30})
  local lines = p:lines()
  T.eq(lines(), "ready")
  return p
end

T.test("SIGINT cancels, runs cleanup, kills children, exits 130", function()
  local marker, pidfile = dir .. "/int-marker", dir .. "/int-pid"
  local p <close> = start_and_wait_ready(interruptible(marker, pidfile))
  local child = tonumber((fs.read(pidfile)))
  T.ok(T.pid_alive(child))
  p:kill(2)
  local code = p:wait()
  T.eq(code, 130)
  T.eq(fs.read(marker), "cleaned")
  T.ok(not T.pid_alive(child), "child process is gone")
end)

T.test("SIGINT stops a child whose handle nobody closes, before cleanup ends", function()
  local marker = dir .. "/int3-marker"
  local p <close> = start_and_wait_ready(write("sig3.lua", ([[
    local sched = require "runbox.sched"
    local proc = require "runbox.proc"
    local T = require "runbox.testing"
    local child = assert(proc.spawn{"sleep", "60"})      -- no <close>: only the signal stops it
    local g <close> = setmetatable({}, {__close = function()
      local t0 = sched.now()
      while T.pid_alive(child.pid) and sched.now() - t0 < 3 do sched.sleep(0.02) end
      local m = io.open(%q, "w") m:write(T.pid_alive(child.pid) and "alive" or "gone") m:close()
    end})
    print("ready")
    io.stdout:flush()
    sched.sleep(60)
  ]]):format(marker)))
  p:kill(2)
  T.eq(p:wait(), 130)
  T.eq(fs.read(marker), "gone", "stopped while the cleanup still ran")
end)

T.test("a second signal during cleanup does not skip cleanup", function()
  local marker, pidfile = dir .. "/int2-marker", dir .. "/int2-pid"
  local p <close> = start_and_wait_ready(interruptible(marker, pidfile))
  p:kill(2)
  sched.sleep(0.1)
  p:kill(2)
  local code = p:wait()
  T.eq(code, 130)
  T.eq(fs.read(marker), "cleaned")
  T.ok(not T.pid_alive(tonumber((fs.read(pidfile)))))
  T.match(p:read_all("stderr"), "still cleaning up")
end)

T.test("SIGTERM exits 143 after cleanup", function()
  local marker, pidfile = dir .. "/term-marker", dir .. "/term-pid"
  local p <close> = start_and_wait_ready(interruptible(marker, pidfile))
  p:kill(15)
  T.eq(p:wait(), 143)
  T.eq(fs.read(marker), "cleaned")
end)

T.test("a task that fails with nothing waiting for it is reported at exit", function()
  local r = runbox{"-e", "require('runbox.sched').spawn(function() error('lost error') end)"}
  T.eq(r.code, 0)
  T.match(r.stderr, "failed and nothing waited for it: .*lost error")
  r = runbox{"-e", "local s = require('runbox.sched') local t = s.spawn(error, 'seen') t:wait()"}
  T.eq(r.stderr, "")
end)

T.test("children get a clean signal mask and default dispositions", function()
  local script = "os.execute('grep -E \"^Sig(Blk|Ign)\" /proc/self/status'); " ..
                 "local p = require('runbox.proc').run{'grep', '-E', '^Sig(Blk|Ign)', '/proc/self/status'}; io.write(p.stdout)"
  local r = runbox{"-e", script}
  T.eq(r.code, 0)
  local n = 0
  for name, hex in r.stdout:gmatch("(Sig%a+):%s*(%x+)") do
    n = n + 1
    -- standard signals only (1..31); the real-time ones above belong to the C library
    T.eq(tonumber(hex:sub(-8), 16) & 0x7fffffff, 0, name .. " of a child")
  end
  T.eq(n, 4)
end)

T.test("the demo recipe runs every step and checks it", function()
  local r = runbox{"demo"}
  T.eq(r.code, 0, r.stderr)
  T.match(r.stdout, "6 steps, 0 failed")
  T.match(runbox{"--help"}.stdout, "\n  demo\n")
  r = runbox{"demo", "--bogus"}
  T.eq(r.code, 2)
  T.match(r.stderr, "unknown flag '%-%-bogus'")
end)

T.test("RUNBOX_LUA_PATH overrides the embedded library", function()
  local root = dir .. "/tree"
  assert(os.execute("mkdir -p " .. root .. "/lua/runbox"))
  write("tree/lua/runbox/override_probe.lua", "return {where = 'tree'}")
  local r = runbox({"-e", "print(require('runbox.override_probe').where)"}, {env = {RUNBOX_LUA_PATH = root}})
  T.eq(r.stdout, "tree\n")
end)

T.run()
os.execute("rm -rf " .. dir)
