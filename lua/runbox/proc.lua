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

-- Parks until the C side says what `method` asks for has happened (c:exit_id(): reaped;
-- c:collect_id(): reaped and its captured streams ended); the method returns nil then.
local function park_until(c, method)
  while true do
    local id = c[method](c)
    if not id then return end
    sched.wait_id(id)
  end
end

local function wait_exit(p) park_until(p._c, "exit_id") end

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

-- Runs the process to its end with the engine reading stdout and stderr itself (no task or Lua
-- per chunk). opts: limit (bytes kept from the end of each stream; default all), timeout
-- (seconds to wait; then nil, err and the process keeps running). Returns {code=, how=, stdout=,
-- stderr=, signal=, timed_out=, stdout_dropped=, stderr_dropped=} (dropped: bytes cut from the
-- front to keep the limit). Do not read the streams yourself meanwhile.
function Proc:collect(opts)
  local limit = opts and opts.limit or 0
  local c = self._c
  c:capture("stdout", limit)
  c:capture("stderr", limit)
  if opts and opts.timeout then
    local ok, err = sched.timeout(opts.timeout, park_until, c, "collect_id")
    if not ok then return nil, err end
  else
    park_until(c, "collect_id")
  end
  local code, how = self:wait()
  local out, out_dropped = c:captured("stdout")
  local err, err_dropped = c:captured("stderr")
  return {code = code, how = how, stdout = out, stderr = err, signal = self.signal,
          timed_out = how == "timeout", stdout_dropped = out_dropped, stderr_dropped = err_dropped}
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

-- Proc:collect for any process with read(stream) and wait() (a remote sandbox's exec too): the
-- engine's own when it has one, else a task per stream reads. What was read before a timeout is
-- kept on the process: a later call goes on from there.
function M.collect(p, opts)
  if p.collect then return p:collect(opts) end
  local limit = opts and opts.limit or 0
  p._collected = p._collected or {stdout = {parts = {}, size = 0, dropped = 0},
                                  stderr = {parts = {}, size = 0, dropped = 0}}
  local function read_stream(stream)
    local st = p._collected[stream]
    while true do
      local chunk, err = p:read(stream)
      if err then error(err, 0) end
      if not chunk then break end
      st.parts[#st.parts + 1] = chunk
      st.size = st.size + #chunk
      if limit > 0 and st.size > 2 * limit then
        local s = table.concat(st.parts)
        st.dropped = st.dropped + #s - limit
        st.parts, st.size = {s:sub(-limit)}, limit
      end
    end
    return table.concat(st.parts), st.dropped
  end
  local function all()
    local errtask = sched.spawn(read_stream, "stderr")
    local guard <close> = setmetatable({}, {__close = function() errtask:cancel("collect ended") end})
    local out, out_dropped = read_stream("stdout")
    local ok, err, err_dropped = errtask:wait()
    if not ok then error(err, 0) end
    local code, how = p:wait()
    return {code = code, how = how, stdout = out, stderr = err, signal = p.signal, timed_out = how == "timeout",
            stdout_dropped = out_dropped, stderr_dropped = err_dropped}
  end
  if not (opts and opts.timeout) then return all() end
  local ok, r = sched.timeout(opts.timeout, all)
  if not ok then return nil, r end
  return r
end

-- Runs a command to its end, collecting stdout and stderr (read concurrently).
-- Returns {code=, how=, stdout=, stderr=, signal=, timed_out=} or nil, err when it cannot start.
function M.run(cmd)
  local p, err = M.spawn(cmd)
  if not p then return nil, err end
  local guard <close> = p
  local r = p:collect()
  return {code = r.code, how = r.how, stdout = r.stdout, stderr = r.stderr, signal = r.signal,
          timed_out = r.timed_out}
end

-- Runs a shell command line (bash -c) to its end; like run.
function M.sh(line, opts)
  local cmd = {"bash", "-c", line}
  for k, v in pairs(opts or {}) do cmd[k] = v end
  return M.run(cmd)
end

return M
