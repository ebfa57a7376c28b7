-- Logging: leveled lines, per-run sinks (a file and/or the console with a run prefix and colour),
-- streams of child processes copied into sinks by a C pump, and redaction of secret values.
--
--   local log = require "runbox.log"
--   log.redact(os.getenv("OPENAI_API_KEY"))
--   local s = log.sink{file = "runs/x/logs/agent.log", console = true, prefix = "[task-3] "}
--   s:info("phase %s", "agent")
--   local h = log.pipe(p, "stdout", s)       -- copies p's stdout into s until it ends
--   local bytes, lines = h:wait()
--   s:close()
--
-- See docs/api/log.md.
local clog = require "runbox.c.log"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}

local RANK = {debug = 1, info = 2, warn = 3, error = 4}
local TAG = {debug = "DEBUG", info = "INFO ", warn = "WARN ", error = "ERROR"}
local TAG_SGR = {debug = "90", warn = "33", error = "31"}
-- colours picked for "auto" prefixes; red is left for errors
local PALETTE = {"cyan", "green", "yellow", "blue", "magenta",
                 "bright_cyan", "bright_green", "bright_yellow", "bright_blue", "bright_magenta"}

local level = "info"
local console_time = false

local function check_level(name, where)
  if not RANK[name] then
    error(("%s: unknown level %s (use debug, info, warn or error)"):format(where, tostring(name)), 3)
  end
  return name
end

-- Sets the global level: lines below it are dropped (sinks without their own level).
function M.set_level(name) level = check_level(name, "log.set_level") end

function M.level() return level end

-- Timestamps on console lines (files always have them). Default: RUNBOX_LOG_TIME=1.
function M.set_time(on) console_time = not not on end

function M.stamp() return clog.stamp() end

local function no_color() local v = os.getenv("NO_COLOR"); return v ~= nil and v ~= "" end

-- "auto" -> a palette colour chosen by the prefix text, so a run keeps its colour.
local function pick_color(color, prefix)
  if color == false or color == "never" or no_color() or not prefix then return nil end
  if color == nil or color == "auto" then
    local h = 0
    for i = 1, #prefix do h = (h * 31 + prefix:byte(i)) % 2147483647 end
    return PALETTE[h % #PALETTE + 1]
  end
  return color
end

---------------------------------------------------------------------------------------------------
-- sinks

local Sink = {}
Sink.__index = Sink

local CONSOLE_FD = {[true] = 2, stderr = 2, stdout = 1}

local function open_file(path, file_prefix)
  local c, msg = clog.open(path, {mkdir = true, prefix = file_prefix})
  if not c then
    return nil, errors.new("io", msg .. " (check the path and that its folder is writable)", {path = path})
  end
  return c
end

-- A sink: opts.file (a path; missing folders are created; lines are appended), opts.console (true
-- or "stderr", "stdout"), opts.prefix (before every console line), opts.color ("auto" default, a
-- name, 0..255 or false; terminals only), opts.file_prefix (before every file line), opts.level
-- (default: the global level), opts.time (timestamps on leveled console lines).
-- Returns the sink or nil, err.
function M.sink(opts)
  if type(opts) ~= "table" then error("log.sink: expected a table {file = ..., console = ...}", 2) end
  if opts.file ~= nil and type(opts.file) ~= "string" then error("log.sink: file must be a path string", 2) end
  if opts.console and not CONSOLE_FD[opts.console] then
    error("log.sink: console must be true, \"stderr\" or \"stdout\"", 2)
  end
  if opts.level then check_level(opts.level, "log.sink") end
  local s = setmetatable({targets = {}, path = opts.file, level = opts.level, time = opts.time}, Sink)
  if opts.file then
    local c, err = open_file(opts.file, opts.file_prefix)
    if not c then return nil, err end
    s.file = c
    s.targets[#s.targets + 1] = c
  end
  if opts.console then
    local fd = CONSOLE_FD[opts.console]
    s.console = clog.fdsink(fd, {prefix = opts.prefix, color = pick_color(opts.color, opts.prefix)})
    s.color_tags = clog.isatty(fd) and not no_color()
    s.targets[#s.targets + 1] = s.console
  end
  return s
end

local function format(fmt, ...)
  if select("#", ...) == 0 then return tostring(fmt) end
  return string.format(fmt, ...)
end

-- Writes a leveled line: files get a timestamp, the console a tag (coloured on terminals).
function Sink:log(lvl, fmt, ...)
  check_level(lvl, "log")
  if RANK[lvl] < RANK[self.level or level] then return true end
  local msg = format(fmt, ...)
  local tag = TAG[lvl]
  local err
  if self.file then
    local _, e = clog.write(self.file, clog.stamp() .. " " .. tag .. " " .. msg)
    err = e
  end
  if self.console then
    if self.color_tags and TAG_SGR[lvl] then tag = "\27[" .. TAG_SGR[lvl] .. "m" .. tag .. "\27[0m" end
    local time = self.time
    if time == nil then time = console_time end
    local line = tag .. " " .. msg
    if time then line = clog.stamp():sub(12) .. " " .. line end
    local _, e = clog.write(self.console, line)
    err = err or e
  end
  if err then return nil, errors.new("io", err) end
  return true
end

function Sink:debug(...) return self:log("debug", ...) end
function Sink:info(...) return self:log("info", ...) end
function Sink:warn(...) return self:log("warn", ...) end
function Sink:error(...) return self:log("error", ...) end

-- Writes text as it is (one or more lines; a newline is added if missing), no level, no time.
function Sink:line(text)
  if #self.targets == 0 then return true end
  local ok, err = clog.write(self.targets, tostring(text))
  if not ok then return nil, errors.new("io", err) end
  return true
end

-- Closes the file (the console is left open for others). Safe to call twice.
function Sink:close()
  for _, c in ipairs(self.targets) do c:close() end
end
Sink.__close = Sink.close

-- The console sink behind log.info and friends: stderr, no prefix.
local default
local function console()
  if not default then default = M.sink{console = true} end
  return default
end

function M.log(lvl, fmt, ...) return console():log(lvl, fmt, ...) end
function M.debug(...) return console():log("debug", ...) end
function M.info(...) return console():log("info", ...) end
function M.warn(...) return console():log("warn", ...) end
function M.error(...) return console():log("error", ...) end
function M.line(text) return console():line(text) end

---------------------------------------------------------------------------------------------------
-- redaction

-- Registers a secret: from now on it is written as *** by every sink. nil or "" is ignored (an
-- unset variable); values shorter than 6 bytes are refused with a warning. Returns true, false
-- (nothing to hide) or nil, err.
function M.redact(secret)
  if secret == nil or secret == "" then return false end
  if type(secret) ~= "string" then error("log.redact: expected a string, got " .. type(secret), 2) end
  local ok, msg = clog.redact(secret)
  if ok then return true end
  local err = errors.new("redact", "log.redact: " .. msg)
  M.warn("%s", err.message)
  return nil, err
end

-- Text with every registered secret masked (for messages and files written without a sink).
function M.scrub(text) return clog.scrub(tostring(text)) end

---------------------------------------------------------------------------------------------------
-- pipes: a stream copied into sinks by the C pump, in its own task

local Pipe = {}
Pipe.__index = Pipe

local function c_targets(sinks, where)
  if getmetatable(sinks) == Sink then sinks = {sinks} end
  if type(sinks) ~= "table" then error(where .. ": expected a sink or a list of sinks", 3) end
  local out = {}
  for i, s in ipairs(sinks) do
    if getmetatable(s) ~= Sink then error(("%s: sink #%d is not a log sink"):format(where, i), 3) end
    for _, c in ipairs(s.targets) do out[#out + 1] = c end
  end
  return out
end

-- Steps the pump until the end of the stream; alive() false means the fd was closed elsewhere.
local function run_pump(pump, fd, alive)
  local ok, err = pcall(function()
    while alive() do
      local r, e = pump:step()
      if r == "eof" then return end
      if not r then errors.raise("io", e) end
      sched.wait_fd(fd, "r")
    end
  end)
  pump:finish()             -- the unterminated tail, also when cancelled
  if not ok then error(err, 0) end
end

local function start(pump, fd, alive, after, name)
  local h = setmetatable({pump = pump}, Pipe)
  h.task = sched.spawn(function()
    local guard <close> = setmetatable({}, {__close = after})
    run_pump(pump, fd, alive)
  end)
  h.task.name = name
  return h
end

local function pump_opts(opts, close)
  opts = opts or {}
  return {keep = opts.keep, max_line = opts.max_line, close = close}
end

-- Copies stream ("stdout" or "stderr") of process p into sinks (a sink or a list) until it ends.
-- opts: keep (lines kept for h:tail()), max_line (bytes before a line is cut, default 1 MiB).
-- Do not read that stream yourself meanwhile. Returns a handle: h:wait(), h:last_line(), h:tail().
function M.pipe(p, stream, sinks, opts)
  if type(p) ~= "table" or type(p.read) ~= "function" then error("log.pipe: expected a process from proc.spawn or a sandbox's exec", 2) end
  if stream ~= "stdout" and stream ~= "stderr" then error("log.pipe: stream must be \"stdout\" or \"stderr\"", 2) end
  if not p._c then return M.pipe_reader(p, stream, sinks, opts) end
  local fd = p._c:fd(stream)
  if not fd then error(("log.pipe: %s of %s is not a pipe (spawn it with %s = \"pipe\")"):format(stream, p.name, stream), 2) end
  local pump = clog.pump(fd, c_targets(sinks, "log.pipe"), pump_opts(opts))
  local alive = function() return p._c:fd(stream) == fd end
  local after = function() if alive() then p._c:close_stream(stream) end end
  return start(pump, fd, alive, after, ("log %s of %s"):format(stream, p.name))
end

-- Same for any non-blocking fd; opts.close closes the fd at the end.
function M.pipe_fd(fd, sinks, opts)
  if math.type(fd) ~= "integer" or fd < 0 then error("log.pipe_fd: expected an fd number", 2) end
  local pump = clog.pump(fd, c_targets(sinks, "log.pipe_fd"), pump_opts(opts, opts and opts.close))
  return start(pump, fd, function() return true end, function() end, "log fd " .. fd)
end

-- Same for a process that is no OS process here (a remote sandbox's exec: it has p:read(stream)):
-- a task copies its chunks into a local pipe that the C pump reads, so lines, redaction, tails
-- and counts work alike.
function M.pipe_reader(p, stream, sinks, opts)
  local targets = c_targets(sinks, "log.pipe")
  local cnet = require "runbox.c.net"
  local rfd, wfd = cnet.pipe()
  local feeder = sched.spawn(function()
    local guard <close> = setmetatable({}, {__close = function() cnet.close(wfd) end})
    while true do
      local chunk, rerr = p:read(stream)
      if not chunk then
        -- a lost stream must not look like its end: say so in the log itself
        if rerr then chunk = ("\n[runbox] reading %s failed: %s\n"):format(stream, errors.message(rerr)) else return end
      end
      local off = 0
      while off < #chunk do
        local n, err = cnet.write(wfd, chunk, off)
        if n then off = off + n
        elseif err == "again" then sched.wait_fd(wfd, "w")
        else return end            -- the reading side is gone
      end
      if rerr then return end
    end
  end)
  feeder.name = ("feed %s of %s"):format(stream, tostring(p.name or "exec"))
  local pump = clog.pump(rfd, targets, pump_opts(opts, true))
  return start(pump, rfd, function() return true end, function() feeder:cancel("log pipe ended") end,
               ("log %s of %s"):format(stream, tostring(p.name or "exec")))
end

-- Waits for the end of the stream. Returns bytes, lines; or nil, err when a sink could not be
-- written (the stream was still read to its end, so the process never stalls on a full pipe).
function Pipe:wait()
  local ok, err = self.task:wait()
  if not ok then return nil, err end
  local bytes, lines = self.pump:counts()
  local serr = self.pump:error()
  if serr then return nil, errors.new("io", serr, {bytes = bytes, lines = lines}) end
  return bytes, lines
end

function Pipe:counts() return self.pump:counts() end
function Pipe:last_line() return self.pump:last_line() end
function Pipe:tail() return self.pump:tail() end
function Pipe:done() return self.task:done() end
function Pipe:cancel() self.task:cancel("log pipe cancelled") end

---------------------------------------------------------------------------------------------------
-- settings from the environment

do
  local env = os.getenv("RUNBOX_LOG_LEVEL")
  if env and env ~= "" then
    env = env:lower()
    if RANK[env] then level = env
    else io.stderr:write(("runbox: RUNBOX_LOG_LEVEL=%s is not a level (use debug, info, warn or error); using info\n"):format(env)) end
  end
  local t = os.getenv("RUNBOX_LOG_TIME")
  console_time = t ~= nil and t ~= "" and t ~= "0"
end

return M
