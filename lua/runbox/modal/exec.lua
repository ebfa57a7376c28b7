-- A command running in a Modal sandbox through its task's command router: TaskExecStart with a
-- client-chosen exec id, stdout and stderr read as TaskExecStdioRead streams that resume at their
-- byte offset after a transient error or a cut, stdin written by offset (TaskExecStdinWrite, eof
-- at the end), the exit status from TaskExecWait.
--
-- The process object has the runbox.proc reading API (p:read, p:lines, p:read_all per stream,
-- p:write, p:close_stdin, p:wait -> code, how), so the modal sandbox backend can hand it out as
-- is. Output is pulled from the router by the reading task (nothing is buffered that nobody
-- reads: Modal keeps it), or pushed to on_stdout / on_stderr callbacks by a task per stream.
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local util = require "runbox.util"
local client = require "runbox.modal.client"
local router_mod = require "runbox.modal.router"

local M = {}

M.STDIN_CHUNK = 1024 * 1024      -- bytes per TaskExecStdinWrite
M.WAIT_ATTEMPT = 60              -- seconds per TaskExecWait attempt (the server holds the call)
M.WAIT_GRACE = 30                -- seconds after an exec's timeout before the client gives up
M.STREAM_RETRIES = 10

local FD = {stdout = 0, stderr = 1}

local Proc = {}
Proc.__index = Proc
Proc.__close = function(p) p:close() end

local function fail(message, fields)
  fields = fields or {}
  fields.reason = fields.reason or "exec"
  return nil, errors.new("modal", message, fields)
end

---------------------------------------------------------------------------------------------------
-- output streams

local function new_reader(p, name, mode)
  return {name = name, fd = FD[name], mode = mode, offset = 0, eof = mode == "null", call = nil,
          delay = router_mod.BASE_DELAY, retries = M.STREAM_RETRIES, auth_retried = false, pending = "",
          p = p}
end

-- After a failed attempt: true to try again (at the same offset), or nil, err.
local function recover(r, gerr, used)
  local p = r.p
  if not errors.is(gerr, "grpc") then return nil, gerr end   -- no router access: already a Modal error
  if gerr.grpc_code == router_mod.UNAUTHENTICATED and not r.auth_retried then
    r.auth_retried = true
    return p.router:refresh(used)
  end
  local deadline = p.deadline and p.deadline + M.WAIT_GRACE
  if client.RETRYABLE[gerr.grpc_code] and r.retries > 0 and not (deadline and sched.now() + r.delay >= deadline) then
    sched.sleep(r.delay)
    r.delay = r.delay * router_mod.FACTOR
    r.retries = r.retries - 1
    r.auth_retried = false
    return true
  end
  return nil, p.router:error("TaskExecStdioRead", gerr, {hint = ("reading the %s of %s at byte %d"):format(r.name, p:describe(), r.offset)})
end

-- The next chunk of output: bytes, nil at the end, or nil, err.
local function next_chunk(r)
  local p = r.p
  while true do
    if r.eof then return nil end
    if not r.call then
      local timeout = p.deadline and math.max(p.deadline + M.WAIT_GRACE - sched.now(), 0.001)
      local call, gerr, used = p.router:open_stream("TaskExecStdioRead",
        {task_id = p.task_id, exec_id = p.exec_id, offset = r.offset, file_descriptor = r.fd}, {timeout = timeout})
      if call then
        r.call, r.used = call, used
      else
        local ok, err = recover(r, gerr, used)
        if not ok then return nil, err end
      end
    else
      local msg, gerr = r.call:recv()
      if msg then
        if #msg.data > 0 then
          r.offset = r.offset + #msg.data
          r.delay, r.retries, r.auth_retried = router_mod.BASE_DELAY, M.STREAM_RETRIES, false
          return msg.data
        end
      elseif not gerr then
        r.call, r.eof = nil, true
        return nil
      else
        r.call:close()
        r.call = nil
        local ok, err = recover(r, gerr, r.used)
        if not ok then return nil, err end
      end
    end
  end
end

local function reader_of(p, stream)
  stream = stream or "stdout"
  local r = p.readers[stream]
  if not r then error(("exec: unknown stream '%s' (stdout or stderr)"):format(tostring(stream)), 3) end
  if r.mode == "callback" then
    error(("exec: %s goes to the on_%s callback; it cannot also be read"):format(stream, stream), 3)
  end
  return r
end

-- Reads the next chunk of stream ("stdout" or "stderr"): bytes; nil at the end; nil, err.
function Proc:read(stream)
  local r = reader_of(self, stream)
  if r.busy then error(("exec: another task is already reading %s"):format(r.name), 2) end
  if r.pending ~= "" then
    local s = r.pending
    r.pending = ""
    return s
  end
  r.busy = true
  local finished = false
  -- a read interrupted (task cancelled, deadline) leaves no half-read call and no busy flag
  local guard <close> = setmetatable({}, {__close = function()
    r.busy = false
    if not finished and r.call then r.call:close(); r.call = nil end
  end})
  local chunk, err = next_chunk(r)
  finished = true
  return chunk, err
end

-- Iterator over the lines of stream (without their line end); raises a read error.
function Proc:lines(stream)
  local r = reader_of(self, stream)
  return require("runbox.proc").lines_of(function() return self:read(r.name) end)
end

-- The rest of stream as one string; nil, err if reading failed.
function Proc:read_all(stream)
  local r = reader_of(self, stream)
  local parts = {}
  while true do
    local chunk, err = self:read(r.name)
    if err then return nil, err end
    if not chunk then return table.concat(parts) end
    parts[#parts + 1] = chunk
  end
end

---------------------------------------------------------------------------------------------------
-- stdin

local function stdin_write(p, data, eof)
  local resp, err = p.router:unary("TaskExecStdinWrite",
    {task_id = p.task_id, exec_id = p.exec_id, offset = p.stdin_offset, data = data, eof = eof},
    {hint = "writing to the stdin of " .. p:describe()})
  if not resp then return nil, err end
  p.stdin_offset = p.stdin_offset + #data
  return true
end

-- Writes data to the command's stdin (stdin = "pipe"). Returns true or nil, err.
function Proc:write(data)
  if type(data) ~= "string" then error("exec: write needs a string", 2) end
  if self.stdin_closed then return fail(("stdin of %s is already closed"):format(self:describe())) end
  if data == "" then return true end
  return self.stdin_lock:with(function()
    for i = 1, #data, M.STDIN_CHUNK do
      local ok, err = stdin_write(self, data:sub(i, i + M.STDIN_CHUNK - 1), false)
      if not ok then return nil, err end
    end
    return true
  end)
end

-- Closes stdin (the command reads end of file). Returns true or nil, err; again: true.
function Proc:close_stdin()
  if self.stdin_closed then return true end
  return self.stdin_lock:with(function()
    if self.stdin_closed then return true end
    local ok, err = stdin_write(self, "", true)
    if ok then self.stdin_closed = true end
    return ok, err
  end)
end

---------------------------------------------------------------------------------------------------
-- exit status

local function status_of(p, resp)
  local code, how
  if resp.signal then
    code, how = 128 + resp.signal, "signal"
    p.signal = resp.signal
  else
    code, how = resp.code, "exit"
  end
  if p.timeout and sched.now() - p.started >= p.timeout - 0.5 and how == "signal" then how = "timeout" end
  return code, how
end

-- Waits for the exit (TaskExecWait, held by the server up to 60 s per attempt, transient errors
-- retried after 0.1 s doubling up to 1 s: a lost answer should not add a second to every exec).
-- Returns code, how or nil, err.
function Proc:_wait_exit()
  if self.exit_code then return self.exit_code, self.exit_how end
  local deadline = self.deadline and self.deadline + M.WAIT_GRACE
  local resp, err = self.router:unary("TaskExecWait", {task_id = self.task_id, exec_id = self.exec_id},
    {timeout = M.WAIT_ATTEMPT, forever = true, base_delay = 0.1, factor = 2, max_delay = 1, deadline = deadline,
     hint = "waiting for " .. self:describe()})
  if not resp then
    if deadline and sched.now() >= deadline - 1 then
      self.exit_code, self.exit_how = 124, "timeout"
      return 124, "timeout"
    end
    return nil, err
  end
  if not resp.exit_status then
    return fail(("Modal TaskExecWait for %s returned no exit status"):format(self:describe()))
  end
  self.exit_code, self.exit_how = status_of(self, resp)
  return self.exit_code, self.exit_how
end

-- Waits for the command to end (and for its output callbacks and stdin feeding to finish).
-- Returns code, how ("exit", "signal" or "timeout": code is 128 + signal for a signal); with
-- `timeout` (seconds), nil, err (code "timeout") if it still runs then; nil, err on failure.
function Proc:wait(timeout)
  if timeout then
    local ok, code, how = sched.timeout(timeout, self._wait_all, self)
    if not ok then
      return nil, errors.new("timeout", ("%s is still running after %gs"):format(self:describe(), timeout))
    end
    return code, how
  end
  return self:_wait_all()
end

function Proc:_wait_all()
  local code, how = self:_wait_exit()
  if not code then return nil, how end
  for _, t in ipairs(self.tasks) do
    local ok, res, err = t:wait()
    if not ok then return nil, res end           -- the task raised
    if res == nil then return nil, err end       -- a callback or a stream failed
  end
  return code, how
end

-- The exit status if the command ended (TaskExecPoll): code, how; or nil while it runs; nil, err.
function Proc:poll()
  if self.exit_code then return self.exit_code, self.exit_how end
  local resp, err = self.router:unary("TaskExecPoll", {task_id = self.task_id, exec_id = self.exec_id},
                                      {hint = "polling " .. self:describe()})
  if not resp then return nil, err end
  if not resp.exit_status then return nil end
  self.exit_code, self.exit_how = status_of(self, resp)
  return self.exit_code, self.exit_how
end

function Proc:running()
  return self.exit_code == nil
end

-- Modal has no call to signal one exec: it ends by itself, at its timeout, or with the sandbox.
function Proc:kill()
  return fail(("%s cannot be signalled: Modal has no call for that; give exec a timeout, or terminate the sandbox")
              :format(self:describe()), {reason = "unsupported"})
end

-- Stops reading (open output streams are closed). The command itself keeps running.
function Proc:close()
  for _, r in pairs(self.readers) do
    if r.call then r.call:close(); r.call = nil end
  end
  for _, t in ipairs(self.tasks) do t:cancel("exec closed") end
end

function Proc:describe()
  return ("exec %s (%s) in task %s"):format(self.exec_id:sub(1, 8), self.argv[1], self.task_id)
end

---------------------------------------------------------------------------------------------------
-- start

local function check_env(env)
  local out = {}
  for k, v in pairs(env or {}) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      error(("exec: env has a bad variable name %s"):format(tostring(k)), 4)
    end
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then error(("exec: env.%s must be a string"):format(k), 4) end
    out[k] = v
  end
  return out
end

local function output_mode(opts, name)
  local v = opts[name]
  local cb = opts["on_" .. name]
  if type(v) == "function" then cb, v = v, nil end
  if cb then
    if type(cb) ~= "function" then error(("exec: on_%s must be a function"):format(name), 4) end
    return "callback", cb
  end
  if v == nil or v == "pipe" then return "pipe" end
  if v == "null" then return "null" end
  error(("exec: %s must be \"pipe\", \"null\" or a function"):format(name), 4)
end

-- Runs a task that hands every chunk of stream to cb; its result is nil, err on failure.
local function pump(p, r, cb)
  return sched.spawn(function()
    while true do
      local chunk, err = next_chunk(r)
      if err then p.callback_err = p.callback_err or err return nil, err end
      if not chunk then return true end
      local ok, cerr = pcall(cb, chunk)
      if not ok then
        local e = errors.is(cerr) and cerr or errors.new("modal", ("the on_%s callback failed: %s"):format(r.name, errors.message(cerr)))
        p.callback_err = p.callback_err or e
        return nil, e
      end
    end
  end)
end

-- Feeds a string to stdin and closes it, in its own task (a command that exits without reading
-- it all makes later writes fail: that is not an error of the exec).
local function feed(p, data)
  return sched.spawn(function()
    if #data > 0 then
      local ok, err = p:write(data)
      if not ok then p.stdin_error = err return true end
    end
    local ok, err = p:close_stdin()
    if not ok then p.stdin_error = err end
    return true
  end)
end

-- Starts argv in the task behind router. opts: stdin (a string to feed then close; "pipe" to
-- write with p:write; default: closed at once), stdout / stderr ("pipe" default, "null", or a
-- function), on_stdout / on_stderr (functions called with each chunk), env, workdir (or cwd),
-- timeout (seconds; the server kills the command then), secret_ids. Returns p or nil, err.
function M.start(router, argv, opts)
  opts = opts or {}
  if type(argv) ~= "table" or #argv == 0 then error("exec: argv must be a non-empty list of strings", 3) end
  for i, a in ipairs(argv) do
    if type(a) ~= "string" then error(("exec: argv[%d] must be a string, got %s"):format(i, type(a)), 3) end
  end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error("exec: timeout must be a positive number of seconds", 3)
  end
  local stdin = opts.stdin
  if stdin ~= nil and type(stdin) ~= "string" then error("exec: stdin must be a string or \"pipe\"", 3) end
  local out_mode, out_cb = output_mode(opts, "stdout")
  local err_mode, err_cb = output_mode(opts, "stderr")
  local env = check_env(opts.env)
  local workdir = opts.workdir or opts.cwd

  local p = setmetatable({router = router, task_id = router.task_id, exec_id = util.uuid(), argv = argv,
                          timeout = opts.timeout, stdin_offset = 0, stdin_lock = sched.semaphore(1),
                          readers = {}, tasks = {}}, Proc)
  local resp, err = router:unary("TaskExecStart", {
    task_id = p.task_id, exec_id = p.exec_id, command_args = argv,
    stdout_config = out_mode == "null" and 0 or 1, stderr_config = err_mode == "null" and 0 or 1,
    timeout_secs = opts.timeout and math.ceil(opts.timeout) or nil, workdir = workdir,
    secret_ids = opts.secret_ids or {}, env = env,
  }, {hint = ("starting %s"):format(table.concat(argv, " "):sub(1, 200))})
  if not resp then return nil, err end
  p.started = sched.now()
  p.deadline = opts.timeout and p.started + opts.timeout
  p.readers.stdout = new_reader(p, "stdout", out_mode)
  p.readers.stderr = new_reader(p, "stderr", err_mode)
  if out_cb then p.tasks[#p.tasks + 1] = pump(p, p.readers.stdout, out_cb) end
  if err_cb then p.tasks[#p.tasks + 1] = pump(p, p.readers.stderr, err_cb) end
  if stdin ~= "pipe" then p.tasks[#p.tasks + 1] = feed(p, stdin or "") end
  return p
end

-- Runs p to the end collecting what is piped: {code =, how =, stdout =, stderr =, signal =}, or
-- nil, err.
function M.collect(p)
  local err_task
  if p.readers.stderr.mode == "pipe" then
    err_task = sched.spawn(function() return p:read_all("stderr") end)
  end
  -- interrupted while reading stdout (a deadline, Ctrl-C): the stderr reader stops too
  local guard <close> = setmetatable({}, {__close = function() if err_task then err_task:cancel("collect ended") end end})
  local out, oerr = "", nil
  if p.readers.stdout.mode == "pipe" then out, oerr = p:read_all("stdout") end
  local errout, eerr = "", nil
  if err_task then
    local ok, v, e = err_task:wait()
    if not ok then eerr = v else errout, eerr = v, e end
  end
  if oerr or eerr then return nil, oerr or eerr end
  local code, how = p:wait()
  if not code then return nil, how end
  return {code = code, how = how, stdout = out, stderr = errout, signal = p.signal}
end

return M
