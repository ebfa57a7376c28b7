-- The helpers of runbox.testing itself: runbox_bin, pid_alive, open_fds, with_temp_dir.
local T = require "runbox.testing"
local fs = require "runbox.fs"
local proc = require "runbox.proc"
local sched = require "runbox.sched"
local util = require "runbox.util"

local BIN = T.runbox_bin()

-- What T.runbox_bin() answers in a child runbox with the given environment.
local function child_bin(env)
  local r = assert(proc.run{BIN, "-e", "io.write(require('runbox.testing').runbox_bin())", env = env,
                            timeout = 30})
  T.eq(r.code, 0, r.stderr)
  return r.stdout
end

T.test("runbox_bin: $RUNBOX_BIN, made absolute against $PWD", function()
  T.eq(child_bin{RUNBOX_BIN = "/opt/runbox/bin/runbox"}, "/opt/runbox/bin/runbox")
  T.eq(child_bin{RUNBOX_BIN = "build/runbox", PWD = "/src/tree"}, "/src/tree/build/runbox")
end)

T.test("runbox_bin: the running binary when $RUNBOX_BIN is unset or empty", function()
  local real = assert(fs.realpath(BIN))
  T.eq(child_bin{RUNBOX_BIN = false}, real)
  T.eq(child_bin{RUNBOX_BIN = ""}, real)
  T.eq(BIN:sub(1, 1), "/")
end)

T.test("pid_alive: running, gone, zombie", function()
  T.eq(T.pid_alive(util.pid()), true)
  T.eq(T.pid_alive(tostring(util.pid())), true)
  -- a child of `sleep` that exits stays a zombie: sleep never reaps it
  local p <close> = assert(proc.spawn{"sh", "-c", "sleep 0 & echo $!; exec sleep 30"})
  local zombie = tonumber(p:lines()())
  T.eq(T.pid_alive(p.pid), true)
  local stat
  for _ = 1, 250 do
    stat = fs.read("/proc/" .. zombie .. "/stat")
    if stat and stat:match("^%d+ %b() Z") then break end
    sched.sleep(0.02)
  end
  T.match(stat, "^%d+ %b() Z", "the test's zombie")
  T.eq(T.pid_alive(zombie), false)
  p:kill(9)
  p:wait()
  T.eq(T.pid_alive(p.pid), false)
  T.eq(T.pid_alive(zombie), false)
  T.raises("pid expected", T.pid_alive, nil)
  T.raises("pid expected", T.pid_alive, "abc")
  T.raises("pid expected", T.pid_alive, 0)
end)

T.test("open_fds: counts this process's descriptors, not its own listing", function()
  local before = T.open_fds()
  -- the way the tests counted before: ls of our fd folder from a shell (no descriptor of ours)
  local out = os.tmpname()
  assert(os.execute(("ls /proc/%d/fd > %s"):format(util.pid(), out)))
  local n = 0
  for _ in io.lines(out) do n = n + 1 end
  os.remove(out)
  T.eq(T.open_fds(), n)
  local f = assert(io.open("/dev/null"))
  T.eq(T.open_fds(), before + 1)
  f:close()
  T.eq(T.open_fds(), before)
  local _ = assert(io.open("/dev/null"))     -- dropped without close: the collection closes it
  _ = nil
  T.eq(T.open_fds(), before)
end)

T.test("with_temp_dir: a fresh private dir, removed afterwards", function()
  local seen
  local run = T.with_temp_dir(function(dir)
    seen = dir
    T.eq(fs.stat(dir).type, "dir")
    T.eq(fs.stat(dir).mode, tonumber("700", 8))
    T.eq(fs.list(dir), {})
    assert(fs.write(dir .. "/f", "x"))
  end)
  run()
  T.match(seen, "/test_testing%-[^/]+$")
  T.eq(fs.exists(seen), false)
  local other
  T.with_temp_dir(function(dir) other = dir end, "custom")()
  T.match(other, "/custom%-[^/]+$")
  T.eq(fs.exists(other), false)
  T.raises("function expected", T.with_temp_dir, "not a function")
end)

T.test("with_temp_dir: removed also when the test fails, whose error is kept", function()
  local seen
  local run = T.with_temp_dir(function(dir)
    seen = dir
    assert(fs.mkdir_p(dir .. "/ro/sub"))
    assert(fs.write(dir .. "/ro/sub/f", "x"))
    fs.chmod(dir .. "/ro", "500")    -- permissions taken away, inside and on the dir itself
    fs.chmod(dir, "500")
    error("the test's own failure", 0)
  end)
  local ok, err = pcall(run)
  T.eq(ok, false)
  T.eq(err, "the test's own failure")
  T.eq(fs.exists(seen), false)
end)

T.run()
