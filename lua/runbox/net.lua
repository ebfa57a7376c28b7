-- runbox.net: TCP and unix sockets with blocking-looking calls. Each call parks only the calling
-- task (sched.wait_fd) and never the process.
--
--   local l = net.listen{host = "127.0.0.1", port = 0}     -- l.port: the port the system chose
--   local s = net.connect{host = "127.0.0.1", port = l.port}
--   s:write("hello\n"); local line = l:accept():read_line()
--
-- Reads return data, nil at end of stream, or nil, err. Errors are runbox errors with a code:
-- "io", "closed", "timeout", "connect", "eof" (read_exactly), "line_too_long" (read_line).
-- A socket is used by one reader task and one writer task at a time.
local c = require "runbox.c.net"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}

M.max_line = 65536          -- default limit of read_line, in bytes (without the newline)
local CHUNK = 65536         -- bytes asked from the kernel per read
local pack, unpack = table.pack, table.unpack

local Socket = {}
Socket.__index = Socket

local function wrap(fd, name)
  return setmetatable({fd = fd, peer = name, buf = "", pos = 1}, Socket)
end

-- Wraps an open non-blocking descriptor (a socket or pipe end) in a socket object that owns it.
function M.wrap(fd, name)
  if math.type(fd) ~= "integer" or fd < 0 then error("net.wrap: fd must be a descriptor number", 2) end
  return wrap(fd, name)
end

function Socket:name()
  return self.peer or ("fd " .. tostring(self.fd))
end

local function closed_err(self, what)
  return errors.new("closed", ("%s %s: the socket is closed"):format(what, self:name()))
end

-- Runs fn(self, ...) under the object's timeout (seconds, if set): a call that takes longer
-- returns nil, err (code "timeout"). sched.timeout raises an enclosing deadline on, untouched.
local function timed(self, what, fn, ...)
  local secs = self.timeout
  if not secs then return fn(self, ...) end
  local r = pack(sched.timeout(secs, fn, self, ...))
  if r[1] then return unpack(r, 2, r.n) end
  return nil, errors.new("timeout", ("%s %s timed out after %gs"):format(what, self:name(), secs))
end

-- Sets the timeout in seconds of each later read, write or accept call (nil: none).
function Socket:set_timeout(seconds)
  if seconds ~= nil and (type(seconds) ~= "number" or seconds < 0) then
    error("set_timeout: seconds must be a non-negative number or nil", 2)
  end
  self.timeout = seconds
  return self
end

---------------------------------------------------------------------------------------------------
-- the read buffer: buf holds data received but not consumed yet, from position pos on

local function buffered(self) return #self.buf - self.pos + 1 end

local function take(self, n)
  local pos = self.pos
  local s = self.buf:sub(pos, pos + n - 1)
  self.pos = pos + #s
  if self.pos > #self.buf then self.buf, self.pos = "", 1 end
  return s
end

local function append(self, data)
  if self.pos > 1 then self.buf, self.pos = self.buf:sub(self.pos), 1 end
  self.buf = self.buf .. data
end

-- One read from the descriptor, parking until there is data: data | nil at EOF | nil, err.
local function fill(self, max)
  while true do
    local fd = self.fd
    if not fd then return nil, closed_err(self, "read from") end
    local data, err = c.read(fd, max)
    if data then
      if data == "" then return nil end
      return data
    end
    if err ~= "again" then return nil, errors.new("io", ("read from %s: %s"):format(self:name(), err)) end
    sched.wait_fd(fd, "r")
  end
end

local function read_some(self, max)
  if buffered(self) > 0 then return take(self, max) end
  return fill(self, max)
end

-- Returns what is available (up to max bytes, default 64 KiB), parking until something is;
-- nil at end of stream; nil, err on failure.
function Socket:read(max)
  max = max or CHUNK
  if math.type(max) ~= "integer" or max < 1 then error("read: max must be a positive integer", 2) end
  if buffered(self) > 0 then return take(self, max) end
  return timed(self, "read from", read_some, max)
end

local function read_exactly(self, n)
  while buffered(self) < n do
    local data, err = fill(self, math.max(CHUNK, n - buffered(self)))
    if not data then
      local partial = take(self, buffered(self))
      err = err or errors.new("eof", ("read from %s: the stream ended after %d of %d bytes"):format(
        self:name(), #partial, n))
      err.partial = partial
      return nil, err
    end
    append(self, data)
  end
  return take(self, n)
end

-- Returns exactly n bytes; nil, err if the stream ends first (err.partial holds what came).
function Socket:read_exactly(n)
  if math.type(n) ~= "integer" or n < 0 then error("read_exactly: n must be a non-negative integer", 2) end
  if buffered(self) >= n then return take(self, n) end
  return timed(self, "read from", read_exactly, n)
end

local function too_long(self, limit)
  return nil, errors.new("line_too_long", ("read from %s: a line is longer than %d bytes"):format(self:name(), limit))
end

local function read_line(self, limit)
  local scanned = 0     -- bytes after pos already searched for "\n"
  while true do
    local buf, pos = self.buf, self.pos
    local i = buf:find("\n", pos + scanned, true)
    if i then
      local j = i - 1
      if j >= pos and buf:byte(j) == 13 then j = j - 1 end
      if j - pos + 1 > limit then return too_long(self, limit) end
      local line = buf:sub(pos, j)
      self.pos = i + 1
      if self.pos > #buf then self.buf, self.pos = "", 1 end
      return line
    end
    scanned = #buf - pos + 1
    if scanned > limit + 1 then return too_long(self, limit) end
    local data, err = fill(self, CHUNK)
    if not data then
      if err then return nil, err end
      if buffered(self) > 0 then return take(self, buffered(self)) end   -- last line without "\n"
      return nil
    end
    append(self, data)
  end
end

-- Returns the next line without its "\n" (and "\r"); nil at end of stream; nil, err (code
-- "line_too_long") for a line longer than max bytes (default net.max_line, 64 KiB).
function Socket:read_line(max)
  max = max or M.max_line
  if not self.timeout or self.buf:find("\n", self.pos, true) then return read_line(self, max) end
  return timed(self, "read from", read_line, max)
end

local function write_all(self, data)
  local off, len = 0, #data
  while off < len do
    local fd = self.fd
    if not fd then return nil, closed_err(self, "write to") end
    local n, err = c.write(fd, data, off)
    if n then
      off = off + n
    elseif err == "again" then
      sched.wait_fd(fd, "w")
    else
      return nil, errors.new("io", ("write to %s: %s"):format(self:name(), err))
    end
  end
  return true
end

-- Writes all of data, parking while the peer is slow. Returns true or nil, err.
function Socket:write(data)
  if type(data) ~= "string" then error("write: data must be a string", 2) end
  if #data == 0 then return true end
  if not self.fd then return nil, closed_err(self, "write to") end
  -- fast path: most writes fit in the socket buffer at once
  local n, err = c.write(self.fd, data, 0)
  if n == #data then return true end
  if not n and err ~= "again" then return nil, errors.new("io", ("write to %s: %s"):format(self:name(), err)) end
  if n then data = data:sub(n + 1) end
  return timed(self, "write to", write_all, data)
end

-- Half-closes: the peer reads end of stream, this side can still read.
function Socket:shutdown()
  if not self.fd then return nil, closed_err(self, "shutdown") end
  local ok, err = c.shutdown_write(self.fd)
  if not ok then return nil, errors.new("io", err .. " (" .. self:name() .. ")") end
  return true
end

-- Closes the descriptor (once; later calls do nothing). A task parked on it wakes with a "closed" error.
function Socket:close()
  local fd = self.fd
  if not fd then return true end
  self.fd = nil
  c.close(fd)
  return true
end

function Socket:closed() return self.fd == nil end

Socket.__close = Socket.close
Socket.__gc = Socket.close
Socket.__tostring = function(s) return "socket " .. s:name() end

---------------------------------------------------------------------------------------------------
-- listeners

local Listener = {}
Listener.__index = Listener
Listener.set_timeout = Socket.set_timeout
Listener.name = function(l) return l.address end

local function accept(self)
  while true do
    local fd = self.fd
    if not fd then return nil, errors.new("closed", "accept on " .. self.address .. ": the listener is closed") end
    local cfd, peer = c.accept(fd)
    if cfd then
      if peer == "" then peer = "unix:" .. self.unix end
      return wrap(cfd, peer)
    end
    if peer ~= "again" then return nil, errors.new("io", ("accept on %s: %s"):format(self.address, peer)) end
    sched.wait_fd(fd, "r")
  end
end

-- Parks until a client connects; returns its socket (sock.peer: "host:port") or nil, err.
function Listener:accept()
  return timed(self, "accept on", accept)
end

-- Stops listening; a unix listener also removes its socket file. A parked accept returns nil, err.
function Listener:close()
  local fd = self.fd
  if not fd then return true end
  self.fd = nil
  c.close(fd)
  if self.unix then os.remove(self.unix) end
  return true
end

Listener.__close = Listener.close
Listener.__gc = Listener.close
Listener.__tostring = function(l) return "listener " .. l.address end

-- listen{host = "127.0.0.1", port = 0, backlog = 511} or listen{unix = path}. host "*" listens on
-- every interface; port 0 lets the system choose (read it back from .port). Returns a listener
-- or nil, err.
function M.listen(opts)
  if type(opts) ~= "table" then error("net.listen: expected a table {host=, port=} or {unix=}", 2) end
  if opts.unix then
    if type(opts.unix) ~= "string" then error("net.listen: unix must be a path string", 2) end
    local fd, err = c.listen_unix(opts.unix, opts.backlog)
    if not fd then return nil, errors.new("listen", err) end
    return setmetatable({fd = fd, unix = opts.unix, address = "unix:" .. opts.unix}, Listener)
  end
  local host = opts.host or "127.0.0.1"
  local port = opts.port or 0
  if math.type(port) ~= "integer" then error("net.listen: port must be an integer", 2) end
  local fd, bound = c.listen_tcp(host ~= "*" and host or nil, port, opts.backlog)
  if not fd then return nil, errors.new("listen", bound) end
  local shown = host:find(":", 1, true) and ("[" .. host .. "]") or host
  return setmetatable({fd = fd, host = host, port = bound, address = shown .. ":" .. bound}, Listener)
end

---------------------------------------------------------------------------------------------------
-- connecting

-- Waits for an asynchronous connect; closes the socket if the wait is interrupted.
local function await_connect(sock)
  local ok, err = pcall(sched.wait_fd, sock.fd, "w")
  if not ok then sock:close(); error(err, 0) end
  local done, cerr = c.finish_connect(sock.fd)
  if done then return true end
  sock:close()
  return nil, cerr
end

local function connect_tcp(opts)
  local where = ("%s:%s"):format(opts.host, opts.port)
  local skip, last = 0, nil
  while true do   -- one address after the other, as resolved (e.g. ::1 then 127.0.0.1 for localhost)
    local fd, pending, index = c.connect_tcp(opts.host, opts.port, skip)
    if not fd then
      return nil, errors.new("connect", last and ("cannot connect to %s: %s"):format(where, last) or pending)
    end
    local sock = wrap(fd, where)
    if not pending then return sock end
    local ok, err = await_connect(sock)
    if ok then return sock end
    last, skip = err, index
  end
end

local function connect_unix(opts)
  local where = "unix:" .. opts.unix
  while true do
    local fd, pending = c.connect_unix(opts.unix)
    if fd then
      local sock = wrap(fd, where)
      if not pending then return sock end
      local ok, err = await_connect(sock)
      if ok then return sock end
      return nil, errors.new("connect", ("cannot connect to %s: %s"):format(where, err))
    end
    if pending ~= "again" then return nil, errors.new("connect", pending) end
    sched.sleep(0.005)    -- the listener's backlog is full: it is busy, try again shortly
  end
end

-- connect{host =, port =, timeout =} or connect{unix = path, timeout =}: parks until connected;
-- returns a socket or nil, err (code "connect" or "timeout") naming the address.
-- Host names are resolved with getaddrinfo, which blocks the process: use numeric addresses or
-- "localhost".
function M.connect(opts)
  if type(opts) ~= "table" then error("net.connect: expected a table {host=, port=} or {unix=}", 2) end
  local fn
  if opts.unix then
    if type(opts.unix) ~= "string" then error("net.connect: unix must be a path string", 2) end
    fn = connect_unix
  else
    if type(opts.host) ~= "string" then error("net.connect: host must be a string", 2) end
    if math.type(opts.port) ~= "integer" then error("net.connect: port must be an integer", 2) end
    fn = connect_tcp
  end
  if not opts.timeout then return fn(opts) end
  local r = pack(sched.timeout(opts.timeout, fn, opts))
  if r[1] then return unpack(r, 2, r.n) end
  local where = opts.unix and ("unix:" .. opts.unix) or ("%s:%s"):format(opts.host, opts.port)
  return nil, errors.new("timeout", ("connect to %s timed out after %gs"):format(where, opts.timeout))
end

-- A pipe as two socket objects: reader, writer (non-blocking, close-on-exec). Returns nil, err on failure.
function M.pipe()
  local r, w = c.pipe()
  if not r then return nil, errors.new("io", w) end
  return wrap(r, "pipe"), wrap(w, "pipe")
end

return M
