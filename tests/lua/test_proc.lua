local T = require "runbox.testing"
local sched = require "runbox.sched"
local proc = require "runbox.proc"
local errors = require "runbox.errors"
local fs = require "runbox.fs"

T.test("run collects stdout, stderr and the exit code", function()
  local r = assert(proc.run{"sh", "-c", "echo out; echo err >&2; exit 3"})
  T.eq(r.code, 3)
  T.eq(r.how, "exit")
  T.eq(r.stdout, "out\n")
  T.eq(r.stderr, "err\n")
end)

T.test("stdin from a string, cwd and env", function()
  local r = assert(proc.run{"sh", "-c", "cat; pwd; echo $RB_X; echo ${HOME:-unset}", stdin = "data\n",
                            cwd = "/tmp", env = {RB_X = "42", HOME = false}})
  T.eq(r.stdout, "data\n/tmp\n42\nunset\n")
end)

T.test("clear_env starts from an empty environment", function()
  local r = assert(proc.run{"/usr/bin/env", clear_env = true, env = {ONLY = "1"}})
  T.eq(r.stdout, "ONLY=1\n")
end)

T.test("streamed stdin writes and line iteration", function()
  local p <close> = assert(proc.spawn{"cat", stdin = "pipe"})
  local lines = {}
  local reader = sched.spawn(function() for l in p:lines() do lines[#lines + 1] = l end end)
  for i = 1, 3 do assert(p:write("line " .. i .. "\n")); sched.sleep(0.01) end
  assert(p:write("tail without newline"))
  p:close_stdin()
  reader:join()
  T.eq(lines, {"line 1", "line 2", "line 3", "tail without newline"})
  T.eq(p:wait(), 0)
end)

T.test("a large stdin and stdout do not deadlock", function()
  local data = string.rep("0123456789abcdef", 1 << 18)  -- 4 MiB, beyond any pipe buffer
  local r = assert(proc.run{"cat", stdin = data})
  T.eq(#r.stdout, #data)
  T.ok(r.stdout == data)
end)

T.test("a signal is reported as 128+n with how = signal", function()
  local r = assert(proc.run{"sh", "-c", "kill -9 $$"})
  T.eq(r.code, 137)
  T.eq(r.how, "signal")
  T.eq(r.signal, 9)
end)

T.test("timeout kills the whole process group, grandchildren included", function()
  local pidfile = os.tmpname()
  local t0 = sched.now()
  local r = assert(proc.run{"sh", "-c", "sleep 30 & echo $! > " .. pidfile .. "; wait", timeout = 0.3})
  T.eq(r.how, "timeout")
  T.ok(sched.now() - t0 < 5, "returned promptly")
  local f = assert(io.open(pidfile)); local gpid = tonumber(f:read("l")); f:close(); os.remove(pidfile)
  sched.sleep(0.1)
  T.ok(not T.pid_alive(gpid), "grandchild sleep was killed")
end)

T.test("timeout escalates to SIGKILL for a process that ignores SIGTERM", function()
  local r = assert(proc.run{"sh", "-c", "trap '' TERM; sleep 30", timeout = 0.2, kill_grace = 0.2})
  T.eq(r.how, "timeout")
end)

T.test("leftover background processes in the group are killed when the leader exits", function()
  local pidfile = os.tmpname()
  local r = assert(proc.run{"sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $! > " .. pidfile})
  T.eq(r.code, 0)
  local f = assert(io.open(pidfile)); local gpid = tonumber(f:read("l")); f:close(); os.remove(pidfile)
  sched.sleep(0.1)
  T.ok(not T.pid_alive(gpid))
end)

T.test("a missing program is an error value naming it", function()
  local p, err = proc.spawn{"no-such-program-xyz"}
  T.eq(p, nil)
  T.ok(errors.is(err, "spawn"))
  T.match(err.message, "no%-such%-program%-xyz")
  local _, err2 = proc.spawn{"ls", cwd = "/no/such/dir"}
  T.match(err2.message, "/no/such/dir")
  local _, err3 = proc.spawn{"no-such-program-xyz", "a", env = {TOKEN = "s3cr3t-value"}}
  T.eq(err3.argv, {"no-such-program-xyz", "a"}, "the error carries the argv only, no env values")
end)

T.test("bad options raise clear errors", function()
  T.raises("stdout must be", proc.spawn, {"true", stdout = "bogus"})
  T.raises("empty", proc.spawn, {})
  T.raises("argument 2", proc.spawn, {"echo", {}})
  T.raises("cwd must be a string", proc.spawn, {"true", cwd = 42})
end)

T.test("100 processes at once, no zombies left", function()
  local tasks = {}
  for i = 1, 100 do
    tasks[i] = sched.spawn(function() return proc.run{"sh", "-c", "sleep 0.2; echo " .. i}.stdout end)
  end
  local t0 = sched.now()
  local results = sched.wait_all(tasks)
  for i = 1, 100 do T.eq(results[i][2], i .. "\n") end
  T.ok(sched.now() - t0 < 10)
  local zombies = 0
  -- fs.list, not io.popen("ls"): the ls child would itself be a zombie of ours until closed
  for _, pid in ipairs(assert(fs.list("/proc"))) do
    local s = tonumber(pid) and fs.read("/proc/" .. pid .. "/stat")
    if s then
      local ppid = s:match("^%d+ %b() %a (%d+)")
      if tonumber(ppid) == require("runbox.util").pid() and s:match("^%d+ %b() Z") then zombies = zombies + 1 end
    end
  end
  T.eq(zombies, 0)
end)

T.test("a second task reading the same stream gets an error instead of hanging", function()
  local p <close> = assert(proc.spawn{"sh", "-c", "sleep 0.2; echo done"})
  local first = sched.spawn(function() return p:read() end)
  sched.sleep(0.02)
  local ok, err = pcall(p.read, p)
  T.eq(ok, false)
  T.match(errors.message(err), "already waiting")
  T.eq(first:join(), "done\n")
end)

T.test("kill_pid signals a process group runbox did not start itself", function()
  local p <close> = assert(proc.spawn{"sleep", "30"})
  T.ok(proc.kill_pid(-p.pid, 9))
  local code, how = p:wait()
  T.eq(how, "signal")
  T.ok(proc.kill_pid(p.pid, 9), "a process that is gone counts as done")
  T.raises("not 0 or %-1", proc.kill_pid, 0)
end)

T.test("wait with a timeout leaves the process running", function()
  local p <close> = assert(proc.spawn{"sleep", "5"})
  local code, err = p:wait(0.05)
  T.eq(code, nil)
  T.ok(errors.is(err, "timeout"))
  T.ok(p:running())
end)

T.test("closing a running process kills it", function()
  local p = assert(proc.spawn{"sleep", "30"})
  local pid = p.pid
  p:close()
  T.ok(not T.pid_alive(pid))
  p:close()  -- twice is fine
end)

T.test("cancelling a task in a read leaves the process to its handle", function()
  local p <close> = assert(proc.spawn{"sh", "-c", "sleep 0.3; echo late"})
  local t = sched.spawn(function() return p:read() end)
  sched.sleep(0.05)
  t:cancel()
  local ok, err = t:wait()
  T.eq(ok, false)
  T.ok(errors.is(err, "cancelled"))
  T.eq(p:read(), "late\n")
end)

T.test("a process nobody holds is still reaped, and its time limit still holds", function()
  local pid
  do
    local p = assert(proc.spawn{"sh", "-c", "sleep 30", timeout = 0.2, stdout = "null", stderr = "null"})
    pid = p.pid
  end
  collectgarbage(); collectgarbage()          -- the handle is gone; the process must not be
  T.ok(T.pid_alive(pid), "still running after its handle was collected")
  local t0 = sched.now()
  while T.pid_alive(pid) and sched.now() - t0 < 5 do sched.sleep(0.02) end
  T.ok(not T.pid_alive(pid), "stopped at its time limit and reaped (no zombie)")
end)

T.test("the exit is watched through a pidfd, not polled", function()
  local p <close> = assert(proc.spawn{"true"})
  T.eq(p._c:exit_watch(), "pidfd", "a fallback to polling here would be a silent slowdown")
  T.eq({p:wait()}, {0, "exit"})
end)

T.test("several tasks can wait for the same process", function()
  local p <close> = assert(proc.spawn{"sh", "-c", "sleep 0.1; exit 4"})
  local waiters = {}
  for i = 1, 3 do waiters[i] = sched.spawn(function() return p:wait() end) end
  for i = 1, 3 do T.eq({waiters[i]:join()}, {4, "exit"}) end
  T.eq({p:wait()}, {4, "exit"}, "and again once it has ended")
end)

T.test("collect: the engine reads both streams to the end; a limit keeps each stream's end", function()
  -- 3 MiB on stdout (the pipe grows after a full read), a little on stderr, exact content kept
  local p <close> = assert(proc.spawn{"sh", "-c", "head -c 3145728 /dev/zero | tr '\\0' x; echo done >&2; exit 2"})
  local r = assert(p:collect())
  T.eq({r.code, r.how, #r.stdout, r.stderr, r.stdout_dropped}, {2, "exit", 3145728, "done\n", 0})
  T.ok(not r.stdout:find("[^x]"), "every byte arrived as written")
  -- with a limit: the last bytes of each stream and how many were cut before them
  local q <close> = assert(proc.spawn{"sh", "-c", "seq 1 100000; seq 1 10 >&2"})
  local t = assert(q:collect{limit = 1000})
  T.ok(#t.stdout >= 1000 and #t.stdout <= 2000, "kept between limit and twice the limit: " .. #t.stdout)
  T.eq(t.stdout:sub(-7), "100000\n")
  T.eq(t.stdout_dropped + #t.stdout, #table.concat((function()
    local all = {} for i = 1, 100000 do all[i] = i .. "\n" end return all end)()))
  T.eq({t.stderr, t.stderr_dropped}, {"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", 0})
end)

T.test("collect: a timeout returns an error and leaves the process running; reading a captured stream is refused", function()
  local p <close> = assert(proc.spawn{"sh", "-c", "echo early; sleep 5; echo late"})
  local r, err = p:collect{timeout = 0.3}
  T.eq(r, nil)
  T.ok(errors.is(err, "timeout"), tostring(err))
  T.ok(p:running())
  T.raises("captured by the engine", p.read, p, "stdout")
  p:kill(9)
  local again = assert(p:collect())
  T.eq({again.stdout, again.how}, {"early\n", "signal"}, "what came before the timeout is kept")
end)

T.test("proc.collect reads a process object that has only read and wait (a remote exec)", function()
  local chunks = {stdout = {"a", "b", "c"}, stderr = {"e"}}
  local fake = {read = function(_, stream)
                  sched.sleep(0.01)
                  return table.remove(chunks[stream], 1)
                end,
                wait = function() return 0, "exit" end}
  local r = assert(proc.collect(fake, {limit = 2}))
  T.eq({r.code, r.stdout, r.stdout_dropped, r.stderr}, {0, "abc", 0, "e"})
  local slow = {read = function() sched.sleep(10) end, wait = function() return 0, "exit" end}
  local none, err = proc.collect(slow, {timeout = 0.1})
  T.eq(none, nil)
  T.ok(errors.is(err, "timeout"))
end)

T.test("started with its stdin, stdout and stderr closed, runbox gives children /dev/null, not its own fds", function()
  -- otherwise the event loop's fds take 0, 1 and 2, and a child inheriting stderr writes into them
  local script = [[
    local proc = require "runbox.proc"
    local r = proc.run{"sh", "-c", "cat; readlink /proc/self/fd/2 /proc/self/fd/1; ls /proc/self/fd | wc -l",
                       stdin = "in\n", stderr = "inherit"}
    local f = io.open(arg[1], "w")
    f:write(r.stdout, "|", r.code)
    f:close()
  ]]
  local dir = assert(fs.temp_dir("rb-proc"))
  assert(fs.write(dir .. "/s.lua", script))
  local r = assert(proc.run{"sh", "-c", 'exec <&- >&- 2>&-; "$0" "$1" "$2"', T.runbox_bin(), dir .. "/s.lua", dir .. "/out"})
  T.eq(r.code, 0)
  local out = fs.read(dir .. "/out")
  -- cat's input; stderr is /dev/null, stdout the pipe; 0, 1, 2 and the folder ls lists: nothing leaked
  T.match(out, "^in\n/dev/null\npipe:%[%d+%]\n4\n|0$")
  fs.remove_tree(dir)
end)

T.run()
