-- Child processes. Each runs in its own process group; reads and writes park the task, never the
-- process. The exit, the time limit and the killing of what a process left in its group are
-- handled by the C side (runbox.c.proc) through the event loop: no task per process.
--
--   local p <close> = proc.spawn{"git", "status", cwd = "/repo", timeout = 30}
--   for line in p:lines() do print(line) end
--   local code, how = p:wait()          -- how: "exit" | "signal" | "timeout"
local cproc = require "runbox.c.proc"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}
local Proc = {}
Proc.__index = Proc

local SIGTERM, SIGKILL = 15, 9

-- Parks until the C side has reaped the process.
local function wait_exit(p)
  local c = p._c
  while true do
    local id = c:exit_id()
    if not id then return end
    sched.wait_id(id)
  end
end

-- Cancelling every task (Ctrl-C, shutdown, os.exit) stops every process too, as it always did
-- when each process had a task of its own.
sched.at_cancel_all(function() cproc.kill_all(SIGKILL) end)

-- Starts a process. cmd is {"prog", "arg", ..., opts...} with options:
--   cwd, env (table; false removes a variable), clear_env, stdin ("pipe" | "inherit" | a string
--   to feed and close; default /dev/null), stdout ("pipe" default | "null" | "inherit"),
--   stderr ("pipe" default | "stdout" | "null" | "inherit"), timeout (seconds; the whole group
--   gets SIGTERM, then SIGKILL after kill_grace, default 2), keep_group (do not kill the group's
--   leftovers when the main process exits).
-- Returns the process or nil, err.
function M.spawn(cmd)
  if type(cmd) ~= "table" then error("proc.spawn: expected a table {\"program\", args...}", 2) end
  local feed = type(cmd.stdin) == "string" and cmd.stdin ~= "pipe" and cmd.stdin ~= "null"
               and cmd.stdin ~= "inherit" and cmd.stdin or nil
  local args = cmd
  if feed then   -- the C side gets a pipe for the string; the caller's table is left as it was
    args = table.move(cmd, 1, #cmd, 1, {})
    for k, v in pairs(cmd) do if type(k) ~= "number" then args[k] = v end end
    args.stdin = "pipe"
  end
  local c, err = cproc.spawn(args)
  -- argv only: cmd also holds env, whose values must not travel in an error that may be logged
  if not c then return nil, errors.new("spawn", err, {argv = table.move(cmd, 1, #cmd, 1, {})}) end
  local p = setmetatable({_c = c, pid = c:pid(), name = cmd[1]}, Proc)
  if feed then
    p._feeder = sched.spawn(function()
      p:write(feed)
      p:close_stdin()
    end)
  end
  return p
end

-- Next chunk of output from stream ("stdout" default, or "stderr"); nil at the end.
function Proc:read(stream, max)
  stream = stream or "stdout"
  while true do
    local data, err = self._c:read(stream, max)
    if data then
      if data == "" then return nil end
      return data
    end
    if err ~= "again" then return nil, errors.new("io", ("reading %s of %s: %s"):format(stream, self.name, err)) end
    local fd = self._c:fd(stream)
    if not fd then return nil end
    sched.wait_fd(fd, "r")
  end
end

-- Iterator over the lines of what read() hands out chunk by chunk (nil at the end; nil, err
-- raises err), without their "\n"; a last unterminated line counts. Also for remote execs.
function M.lines_of(read)
  local cur, pos, done = "", 1, false
  return function()
    while true do
      local nl = cur:find("\n", pos, true)
      if nl then
        local line = cur:sub(pos, nl - 1)
        pos = nl + 1
        return line
      end
      if done then
        if pos > #cur then return nil end
        local line = cur:sub(pos)
        cur, pos = "", 1
        return line
      end
      local chunk, err = read()
      if err then error(err, 0) end
      if chunk then cur, pos = cur:sub(pos) .. chunk, 1 else done = true end
    end
  end
end

-- Iterator over the lines of a stream (see lines_of).
function Proc:lines(stream)
  stream = stream or "stdout"
  return M.lines_of(function() return self:read(stream) end)
end

-- Reads a whole stream to its end.
function Proc:read_all(stream)
  local parts = {}
  for chunk in function() return self:read(stream, 1 << 20) end do parts[#parts + 1] = chunk end
  return table.concat(parts)
end

-- Writes all of data to stdin (parks while the pipe is full). true, or nil, err.
function Proc:write(data)
  local off = 0
  while off < #data do
    local n, err = self._c:write(data, off)
    if n then
      off = off + n
    elseif err == "again" then
      sched.wait_fd(self._c:fd("stdin"), "w")
    else
      return nil, errors.new("io", ("writing to %s: %s"):format(self.name, err))
    end
  end
  return true
end

function Proc:close_stdin() self._c:close_stream("stdin") end

-- Sends a signal (default SIGTERM) to the process group.
function Proc:kill(sig) return self._c:kill(sig or SIGTERM) end

-- Waits for the exit. Returns code, how: how is "exit" (code = exit status), "signal" (code =
-- 128 + signal number, p.signal = the number) or "timeout" (killed at the time limit).
-- With a timeout argument, returns nil, err when the process is still running after it.
function Proc:wait(timeout)
  if timeout then
    local ok, err = sched.timeout(timeout, wait_exit, self)
    if not ok then return nil, err end
  else
    wait_exit(self)
  end
  local how, status, timed_out = self._c:status()
  self.how, self.status, self.timed_out = how, status, timed_out or nil
  if how == "signal" then self.signal = status end
  local code = how == "signal" and 128 + status or status
  return code, timed_out and "timeout" or how
end

function Proc:running() return self._c:status() == nil end

-- Kills the group if still running, waits for it, releases the pipes. Safe to call twice.
function Proc:close()
  if self:running() then
    self._c:kill(SIGKILL)
    wait_exit(self)
  end
  if self._feeder then self._feeder:cancel("closed") end
  self._c:destroy()
end
Proc.__close = Proc.close

-- Sends a signal (default SIGTERM) to a process runbox did not start (a negative id: a process
-- group). true, or nil, err; a process that is already gone counts as done.
function M.kill_pid(pid, sig) return cproc.kill_pid(pid, sig or SIGTERM) end

-- Runs a command to its end, collecting stdout and stderr (read concurrently).
-- Returns {code=, how=, stdout=, stderr=, signal=, timed_out=} or nil, err when it cannot start.
function M.run(cmd)
  local p, err = M.spawn(cmd)
  if not p then return nil, err end
  local guard <close> = p
  local errtask = sched.spawn(function() return p:read_all("stderr") end)
  local out = p:read_all("stdout")
  local _, stderr = errtask:wait()
  local code, how = p:wait()
  return {code = code, how = how, stdout = out, stderr = stderr or "", signal = p.signal,
          timed_out = how == "timeout"}
end

-- Runs a shell command line (bash -c) to its end; like run.
function M.sh(line, opts)
  local cmd = {"bash", "-c", line}
  for k, v in pairs(opts or {}) do cmd[k] = v end
  return M.run(cmd)
end

return M
