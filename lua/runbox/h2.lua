-- HTTP/2 client streams (runbox.grpc's transport): one connection per target shared by every task,
-- streams multiplexed on it up to the server's SETTINGS_MAX_CONCURRENT_STREAMS, another connection
-- opened beyond that. Cleartext with prior knowledge for http://, TLS with ALPN "h2" for https://,
-- unix sockets for unix:/path. nghttp2 and OpenSSL underneath (runbox.c.h2), driven by the loop.
--
--   local t = h2.target("http://127.0.0.1:50051")
--   local st = h2.request(t, {method = "POST", path = "/x", headers = {["content-type"] = "a/b"}, body = "..."})
--   local resp, err = st:response()       -- st.status, st.headers once the headers arrived
--   local chunk, err = st:read()          -- body bytes; nil at the end (st.trailers set); nil, err
--   st:close()                            -- resets the stream if it still runs
--
-- A response body is buffered in C only up to the stream's flow-control window: the server may send
-- more only as the reader takes it. Errors are values: errors.new("h2" | "timeout", message,
-- {kind = "connect" | "tls" | "lost" | "reset" | "refused" | "goaway" | "protocol" | "timeout" |
-- "cancelled", h2_code = n}).
local c = require "runbox.c.h2"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}

M.max_idle = 118     -- seconds an unused connection stays open for reuse (as libcurl)
M.retries = 3        -- new attempts of a stream the server did not process (refused, GOAWAY)

local pools = {}     -- target key -> list of connections

---------------------------------------------------------------------------------------------------
-- targets

local TARGET_OPTIONS = {ca_file = "string", insecure = "boolean", connect_timeout = "number",
                        window = "number", conn_window = "number"}

-- A target: "http://host[:port][/prefix]" (cleartext, prior knowledge), "https://..." (TLS) or
-- "unix:/path/to.sock" (cleartext over a unix socket). opts: ca_file, insecure, connect_timeout,
-- window and conn_window (flow-control windows of a stream and of a connection, bytes).
function M.target(url, opts)
  if type(url) ~= "string" then error("h2.target: url must be a string", 2) end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = TARGET_OPTIONS[k]
    if not want then error(("h2.target: unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= want then error(("h2.target: option '%s' must be a %s"):format(k, want), 2) end
  end
  local t = {url = url, ca_file = opts.ca_file, insecure = opts.insecure, connect_timeout = opts.connect_timeout,
             window = opts.window, conn_window = opts.conn_window, prefix = ""}
  local sock = url:match("^unix:(.+)$")
  if sock then
    t.scheme, t.unix, t.authority = "http", (sock:gsub("^//", "")), "localhost"
  else
    local scheme, hostport, prefix = url:match("^(https?)://([^/]+)(.*)$")
    if not scheme then error("h2.target: url must start with http://, https:// or unix:, got " .. url, 2) end
    local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
    if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
    if not host then error("h2.target: cannot read the host and port of " .. url, 2) end
    port = tonumber(port) or (scheme == "https" and 443 or 80)
    t.scheme, t.host, t.port, t.tls = scheme, host, port, scheme == "https"
    t.authority = (host:find(":") and ("[" .. host .. "]") or host) .. ":" .. port
    t.prefix = prefix:gsub("/+$", "")
  end
  t.key = table.concat({t.scheme, t.host or "", t.port or "", t.unix or "", t.ca_file or "",
                        tostring(t.insecure or false), tostring(t.connect_timeout or ""),
                        tostring(t.window or ""), tostring(t.conn_window or "")}, "|")
  return t
end

-- Drops the connections of list that closed, are going away, or stayed unused longer than
-- M.max_idle; returns one that can take one more stream, if any.
local function sweep(list, now)
  local found
  for i = #list, 1, -1 do
    local conn = list[i]
    local state, active, idle_since, available = conn:usage()
    if state == "closed" or state == "goaway" or (active == 0 and now - idle_since > M.max_idle) then
      table.remove(list, i)
      if active == 0 then conn:close() end
    elseif available then
      found = conn
    end
  end
  return found
end

local last_sweep = 0

-- A connection of the target's pool that can take one more stream, or a new one. Now and then
-- every pool is swept, so targets not used again (a Modal task's router) do not keep theirs.
local function connection(t)
  local now = sched.now()
  if now - last_sweep > M.max_idle / 4 then
    last_sweep = now
    for key, l in pairs(pools) do
      sweep(l, now)
      if #l == 0 then pools[key] = nil end
    end
  end
  local list = pools[t.key]
  if not list then
    list = {}
    pools[t.key] = list
  end
  local found = sweep(list, now)
  if found then return found end
  local conn = c.connect{host = t.host, port = t.port, unix = t.unix, tls = t.tls, ca_file = t.ca_file,
                         insecure = t.insecure, connect_timeout = t.connect_timeout, window = t.window,
                         conn_window = t.conn_window}
  list[#list + 1] = conn
  return conn
end

-- The target's connections now: a list of info tables (state, active, total, local_port, ...).
function M.connections(t)
  local out = {}
  for i, conn in ipairs(pools[t.key] or {}) do out[i] = conn:info() end
  return out
end

-- Closes every pooled connection (streams still running on them fail with "cancelled").
function M.close_all()
  for key, list in pairs(pools) do
    for _, conn in ipairs(list) do conn:close() end
    pools[key] = nil
  end
end

M.version = c.version

---------------------------------------------------------------------------------------------------
-- streams

local Stream = {}
Stream.__index = Stream
Stream.__close = function(s) s:close() end

local function check_header(name, value)
  if type(name) ~= "string" or not name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
    error(("h2.request: invalid header name %s"):format(tostring(name)), 4)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" or value:find("[\r\n%z]") then
    error(("h2.request: the value of header %q must be a string without line breaks"):format(name), 4)
  end
  return name:lower(), value
end

-- The flat header list for C: pseudo-headers first, then headers ({name = value} or a list of
-- {name, value} pairs).
local function header_list(t, req)
  local path = req.path or "/"
  if path:sub(1, 1) ~= "/" then error("h2.request: path must start with /", 3) end
  local out = {":method", (req.method or "GET"):upper(), ":scheme", t.scheme, ":authority", t.authority,
               ":path", t.prefix .. path}
  local h = req.headers or {}
  local names = {}
  for k in pairs(h) do if type(k) ~= "number" then names[#names + 1] = k end end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(names) do
    local name, value = check_header(k, h[k])
    out[#out + 1], out[#out + 2] = name, value
  end
  for _, pair in ipairs(h) do
    local name, value = check_header(pair[1], pair[2])
    out[#out + 1], out[#out + 2] = name, value
  end
  return out
end

local function header_map(flat)
  local map, list = {}, {}
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    list[#list + 1] = {name = name, value = value}
    map[name] = map[name] and (map[name] .. ", " .. value) or value
  end
  return map, list
end

local function start(self)
  self.x = connection(self.target):request(self.headers_out, self.copt)
  self.rid, self.sid = self.x:ids()
end

local REQUEST_OPTIONS = {method = "string", path = "string", headers = "table", body = "string",
                         body_stream = "boolean", timeout = "number", upload_limit = "number"}

-- Starts a request on target (from h2.target) and returns the stream at once. req: method
-- ("GET"), path ("/"), headers ({name = value} or {{name, value}, ...}), body (a string) or
-- body_stream = true (then st:write(chunk), st:finish()), timeout (seconds for the whole
-- exchange: the stream is reset then), upload_limit (bytes write() buffers).
function M.request(t, req)
  if type(t) ~= "table" or not t.key then error("h2.request: target must come from h2.target", 2) end
  if type(req) ~= "table" then error("h2.request: expected a table of options", 2) end
  for k, v in pairs(req) do
    local want = REQUEST_OPTIONS[k]
    if not want then error(("h2.request: unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= want then error(("h2.request: option '%s' must be a %s"):format(k, want), 2) end
  end
  if req.timeout and req.timeout <= 0 then error("h2.request: option 'timeout' must be positive seconds", 2) end
  local self = setmetatable({
    target = t, headers_out = header_list(t, req), attempts = 1,
    copt = {body = req.body, body_stream = req.body_stream, timeout = req.timeout, upload_limit = req.upload_limit},
    what = ("%s %s%s"):format((req.method or "GET"):upper(), t.url:gsub("/+$", ""), req.path or "/"),
  }, Stream)
  start(self)
  return self
end

-- Parks until the stream has news on id; an interruption (cancel, deadline) closes the stream
-- before it propagates, so nothing is left running.
local function park(self, id)
  local ok, err = pcall(sched.wait_id, id)
  if not ok then
    self:close()
    error(err, 0)
  end
end

function Stream:_error(kind, msg, code)
  return errors.new(kind == "timeout" and "timeout" or "h2", ("%s (%s)"):format(msg, self.what),
                    {kind = kind, h2_code = code})
end

-- A stream the server never saw may go again, on another connection: refused ones (REFUSED_STREAM,
-- or above a GOAWAY's last stream) and ones whose connection died before the request left.
function Stream:_retry(kind, sent)
  if self.copt.body_stream or self.attempts > M.retries then return false end
  if kind ~= "refused" and not (kind == "lost" and not sent) then return false end
  self.x:close()
  self.attempts = self.attempts + 1
  start(self)
  return true
end

-- Parks until the response headers arrived: returns the stream, now with status, headers (a map
-- of lowercase names; repeated headers joined with ", ") and header_list; or nil, err.
function Stream:response()
  if self.status then return self end
  while true do
    local head, ended = self.x:state()
    if head then
      local status, flat = self.x:head()
      self.status = status
      self.headers, self.header_list = header_map(flat)
      return self
    end
    if ended then
      local ok, kind, msg, code, sent = self.x:result()
      if ok then return nil, self:_error("protocol", "the stream ended without a response", 0) end
      if not self:_retry(kind, sent) then return nil, self:_error(kind, msg, code) end
    else
      park(self, self.rid)
    end
  end
end

-- Next body chunk; nil at the end (then st.trailers is set); nil, err if the stream failed.
function Stream:read()
  while true do
    local chunk = self.x:read()
    if chunk then return chunk end
    if chunk == nil then
      local ok, kind, msg, code = self.x:result()
      if not ok then return nil, self:_error(kind, msg, code) end
      if not self.trailers then self.trailers, self.trailer_list = header_map(self.x:trailers()) end
      return nil
    end
    park(self, self.rid)
  end
end

-- Queues chunk of a streamed request body; parks while the upload buffer is full. true, or nil, err.
function Stream:write(chunk)
  if type(chunk) ~= "string" then error("stream:write: expected a string, got " .. type(chunk), 2) end
  while true do
    local ok, why = self.x:write(chunk)
    if ok then return true end
    if ok == nil then
      local done, kind, msg, code = self.x:result()
      if done == false then return nil, self:_error(kind, msg, code) end
      return nil, errors.new("h2", ("cannot write the request body: %s (%s)"):format(why, self.what), {kind = "closed"})
    end
    park(self, self.sid)
  end
end

-- Ends a streamed request body.
function Stream:finish()
  self.x:finish()
  return true
end

-- Buffer and flow figures: buffered, body_peak, received, sent, upload_buffered, id.
function Stream:stats() return self.x:stats() end

-- Stops the stream (RST_STREAM CANCEL if it still runs); safe to call more than once.
function Stream:close() self.x:close() end

return M
