-- HTTP client: HTTP/1.1 and HTTP/2 (TLS or cleartext prior knowledge), unix sockets, streamed
-- request and response bodies. Requests park the task, never the process; many run at once and
-- HTTP/2 requests to one host share a connection.
--
--   local resp, err = http.request{method = "POST", url = url, body = "{}", timeout = 10}
--   local resp = http.request{url = url, stream = true}; for chunk in resp:chunks() do ... end
--   local t = http.open{method = "PUT", url = url}; t:write(a); t:write(b); t:finish()
--   local resp = t:response()
--
-- Errors are values (nil, err); a non-2xx status is a response, not an error.
local c = require "runbox.c.http"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}

M.user_agent = "runbox/0.1"
M.body_limit = 1024 * 1024       -- response bytes buffered before the transfer pauses (streaming)

local OPTIONS = {
  method = "string", url = "string", headers = "table", body = "string", timeout = "number",
  connect_timeout = "number", http_version = "string", unix_socket = "string", insecure = "boolean",
  ca_file = "string", follow = "boolean", max_redirects = "number", stream = "boolean",
  body_limit = "number", upload_limit = "number", body_size = "number", body_stream = "boolean",
  pipewait = "boolean", verbose = "boolean", fresh_connect = "boolean",
}

local VERSIONS = {["1.1"] = true, ["2"] = true, ["2-prior-knowledge"] = true}

---------------------------------------------------------------------------------------------------
-- options

-- Hides credentials in URLs shown in messages.
local function shown(url)
  return (url:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1***@"))
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "http+unix://%2Fpath%2Fto.sock/request/path" -> "http://localhost/request/path", "/path/to.sock"
local function unix_url(url)
  local sock, rest = url:match("^http%+unix://([^/]+)(.*)$")
  if not sock then return url end
  if rest == "" then rest = "/" end
  return "http://localhost" .. rest, unescape(sock)
end

local function check_header(name, value, where)
  if type(name) ~= "string" or not name:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
    error(("%s: invalid header name %s"):format(where, tostring(name)), 4)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" or value:find("[\r\n%z]") then
    error(("%s: the value of header %q must be a string without line breaks"):format(where, name), 4)
  end
  return value
end

-- Header list for curl from {name = value} or {"Name: value", ...}. An empty value sends an empty
-- header ("Name;" in curl's syntax). The default user agent and "no Expect: 100-continue" are added
-- unless given.
local function header_lines(h, where)
  local out, seen = {}, {}
  local function add(name, value)
    value = check_header(name, value, where)
    seen[name:lower()] = true
    out[#out + 1] = value == "" and (name .. ";") or (name .. ": " .. value)
  end
  if h then
    local names = {}
    for k in pairs(h) do if type(k) ~= "number" then names[#names + 1] = k end end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(names) do add(k, h[k]) end
    for _, line in ipairs(h) do
      local name, value = tostring(line):match("^([^:]+):%s*(.*)$")
      if not name then error(("%s: header %q is not \"Name: value\""):format(where, tostring(line)), 3) end
      add(name, value)
    end
  end
  if not seen["user-agent"] then out[#out + 1] = "User-Agent: " .. M.user_agent end
  if not seen["expect"] then out[#out + 1] = "Expect:" end
  return out
end

-- Checks the options and builds the table the C layer takes, plus "METHOD url" for messages.
local function prepare(opts, where)
  if type(opts) ~= "table" then error(where .. ": expected a table of options", 3) end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error(("%s: unknown option '%s'"):format(where, tostring(k)), 3) end
    if type(v) ~= want then error(("%s: option '%s' must be a %s, not a %s"):format(where, k, want, type(v)), 3) end
  end
  if not opts.url then error(where .. ": option 'url' is required", 3) end
  if opts.http_version and not VERSIONS[opts.http_version] then
    error(where .. ": option 'http_version' must be \"1.1\", \"2\" or \"2-prior-knowledge\"", 3)
  end
  for _, k in ipairs{"timeout", "connect_timeout"} do
    if opts[k] and opts[k] <= 0 then error(("%s: option '%s' must be positive seconds"):format(where, k), 3) end
  end
  local url, sock = unix_url(opts.url)
  local method = (opts.method or "GET"):upper()
  local copt = {
    url = url, method = method, headers = header_lines(opts.headers, where), body = opts.body,
    body_stream = opts.body_stream, body_size = opts.body_size, timeout = opts.timeout,
    connect_timeout = opts.connect_timeout, http_version = opts.http_version,
    unix_socket = opts.unix_socket or sock, insecure = opts.insecure, ca_file = opts.ca_file,
    follow = opts.follow, max_redirects = opts.max_redirects, upload_limit = opts.upload_limit,
    body_limit = opts.body_limit or M.body_limit, verbose = opts.verbose, fresh_connect = opts.fresh_connect,
  }
  -- HTTP/2 requests wait for a connection being set up rather than each opening their own
  if opts.pipewait ~= nil then copt.pipewait = opts.pipewait
  else copt.pipewait = opts.http_version == "2" or opts.http_version == "2-prior-knowledge"
                       or (opts.http_version == nil and url:match("^https:") ~= nil) end
  return copt, method .. " " .. shown(opts.url)
end

---------------------------------------------------------------------------------------------------
-- transfers

local Transfer = {}
Transfer.__index = Transfer
Transfer.__close = function(t) t:close() end

local Response = {}
Response.__index = Response
Response.__close = function(r) r:close() end

-- The transfer's error as an object, or nil while it runs or when it succeeded.
local function failure(t)
  local code, msg = t.x:result()
  if not code or code == 0 then return nil end
  if t.closed then return errors.new("http", "the request was closed (" .. t.what .. ")", {curl_code = code}) end
  local kind = code == 28 and "timeout" or "http"
  return errors.new(kind, ("%s (%s)"):format(msg, t.what),
                    {curl_code = code, url = shown(t.url), uploaded = t.x:stats().uploaded})
end

-- Parks until the transfer has news on id; an interruption (cancel, deadline) closes the transfer
-- before it propagates, so nothing is left running.
local function park(t, id)
  local ok, err = pcall(sched.wait_id, id)
  if not ok then
    t:close()
    error(err, 0)
  end
end

-- Starts a request and returns the transfer at once. Options as http.request; with
-- body_stream = true the body is written with t:write(chunk) and ended with t:finish().
local function open(opts, where)
  local copt, what = prepare(opts, where)
  local x = c.open(copt)
  local rid, sid = x:ids()
  return setmetatable({x = x, rid = rid, sid = sid, what = what, url = opts.url}, Transfer)
end

function M.open(opts) return open(opts, "http.open") end

-- Queues chunk of the request body; parks while the upload buffer is full. true, or nil, err.
function Transfer:write(chunk)
  if type(chunk) ~= "string" then error("transfer:write: expected a string, got " .. type(chunk), 2) end
  while true do
    local ok, why = self.x:write(chunk)
    if ok then return true end
    if ok == nil then
      return nil, failure(self) or errors.new("http", ("cannot write the request body: %s (%s)"):format(why, self.what))
    end
    park(self, self.sid)
  end
end

-- Ends the request body.
function Transfer:finish()
  self.x:finish()
  return true
end

local function header_map(raw)
  local map, list = {}, {}
  for line in raw:gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:%s]+)%s*:%s*(.-)%s*$")
    if name then
      list[#list + 1] = {name = name, value = value}
      local k = name:lower()
      map[k] = map[k] and (map[k] .. ", " .. value) or value
    end
  end
  return map, list
end

local function new_response(t)
  local raw = t.x:head()
  local status_line, rest = raw:match("^([^\r\n]*)\r?\n(.*)$")
  status_line = status_line or raw
  local version, status, reason = status_line:match("^HTTP/(%S+)%s+(%d+)%s*(.-)%s*$")
  local headers, list = header_map(rest or "")
  return setmetatable({
    status = tonumber(status), reason = reason, http_version = version,
    headers = headers, header_list = list, transfer = t,
  }, Response)
end

-- Parks until the response headers arrived; returns the response, whose body is read with
-- resp:read(), resp:chunks(), resp:lines() or resp:read_all(); or nil, err.
function Transfer:response()
  if self.resp then return self.resp end
  while true do
    local head, done = self.x:state()
    if head then
      self.resp = new_response(self)
      return self.resp
    end
    if done then
      return nil, failure(self) or errors.new("http", "no response (" .. self.what .. ")")
    end
    park(self, self.rid)
  end
end

-- Connection and buffer figures of the transfer (num_connects, local_port, total_time once done;
-- buffered, body_peak, pauses).
function Transfer:stats() return self.x:stats() end

-- Stops the transfer if it still runs; safe to call more than once.
function Transfer:close()
  if not self.closed then
    local done = select(2, self.x:state())
    self.closed = not done
    self.x:close()
  end
end

---------------------------------------------------------------------------------------------------
-- responses

-- Next body chunk; nil at the end (then resp.trailers is set); nil, err if the transfer failed.
function Response:read()
  local t = self.transfer
  while true do
    local chunk = t.x:read()
    if chunk then return chunk end
    if chunk == nil then
      local err = failure(t)
      if err then return nil, err end
      if not self.trailers then self.trailers, self.trailer_list = header_map(t.x:trailers()) end
      return nil
    end
    park(t, t.rid)
  end
end

-- The rest of the body as one string, or nil, err.
function Response:read_all()
  local parts = {}
  while true do
    local chunk, err = self:read()
    if not chunk then
      if err then return nil, err end
      return table.concat(parts)
    end
    parts[#parts + 1] = chunk
  end
end

-- Iterator over body chunks; raises the error if the transfer fails.
function Response:chunks()
  return function()
    local chunk, err = self:read()
    if err then error(err, 0) end
    return chunk
  end
end

-- Iterator over body lines (without the line end); raises the error if the transfer fails.
function Response:lines()
  local pending, pos, ended = "", 1, false
  return function()
    while true do
      local s, e = pending:find("\r?\n", pos)
      if s then
        local line = pending:sub(pos, s - 1)
        pos = e + 1
        return line
      end
      if ended then
        if pos <= #pending then
          local line = pending:sub(pos)
          pending, pos = "", 1
          return line
        end
        return nil
      end
      local chunk, err = self:read()
      if err then error(err, 0) end
      if chunk then pending, pos = pending:sub(pos) .. chunk, 1
      else ended = true end
    end
  end
end

function Response:stats() return self.transfer:stats() end

-- Stops reading: the transfer ends and its connection is released.
function Response:close() self.transfer:close() end

---------------------------------------------------------------------------------------------------
-- requests

-- Makes a request. Options: url (required), method ("GET"), headers ({name = value} or
-- {"Name: value"}), body (string), timeout and connect_timeout (seconds), http_version ("1.1" |
-- "2" | "2-prior-knowledge"), unix_socket (path; also http+unix://%2Fpath.sock/x URLs), insecure,
-- ca_file, follow (redirects, off by default), stream (return once the headers arrived).
-- Returns the response (status, headers, header_list, body, trailers, http_version) or nil, err.
function M.request(opts)
  if type(opts) ~= "table" then error("http.request: expected a table of options", 2) end
  if opts.body_stream then error("http.request: a streamed request body needs http.open", 2) end
  local stream = opts.stream
  local copt = {}
  for k, v in pairs(opts) do copt[k] = v end
  copt.stream = nil
  if not stream and not opts.body_limit then copt.body_limit = 0 end   -- whole body: no pausing
  local t = open(copt, "http.request")
  if stream then
    local resp, err = t:response()
    if not resp then t:close(); return nil, err end
    return resp
  end
  local guard <close> = t
  local resp, err = t:response()
  if not resp then return nil, err end
  resp.body, err = resp:read_all()
  if not resp.body then return nil, err end
  return resp
end

local function with(opts, fields)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  for k, v in pairs(fields) do o[k] = v end
  return o
end

function M.get(url, opts) return M.request(with(opts, {url = url, method = "GET"})) end

function M.post(url, body, opts) return M.request(with(opts, {url = url, method = "POST", body = body})) end

-- Transfers in progress and connections opened so far in this process (for tests and the REPL).
function M.live() return c.live() end
function M.connects() return c.connects() end
M.curl_version = c.version

return M
