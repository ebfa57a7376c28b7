-- runbox.httpd: a small HTTP/1.1 server on the engine's loop.
--
--   local srv = httpd.serve({host = "127.0.0.1", port = 0}, function(req, res)
--     res:header("content-type", "text/plain")
--     res:send("hello " .. req.path)
--   end)
--   print(srv.url); ...; srv:close()
--
-- One task per connection reads requests one after the other (so pipelined requests are answered
-- in order); each request runs in its own task. Malformed requests get 400 and the connection is
-- closed; a handler that raises gets 500 (logged with its traceback).
local net = require "runbox.net"
local sched = require "runbox.sched"
local errors = require "runbox.errors"

local M = {}

M.defaults = {
  max_line = 16384,              -- request line and each header line, bytes
  max_headers = 100,             -- header lines per request (and trailer lines)
  max_body = 64 * 1024 * 1024,   -- req:body() and req:chunks() beyond this: 413
  idle_timeout = 60,             -- seconds a kept-alive connection may wait for its next request
  io_timeout = 60,               -- seconds any one read or write may take during a request
  max_connections = 1024,        -- accepting pauses while this many are open
  drain_limit = 1024 * 1024,     -- unread request body the server reads away to keep a connection
  grace = 0,                     -- default of srv:close{grace=}
}

local CHUNK = 65536

local reasons = {
  [100] = "Continue", [101] = "Switching Protocols", [200] = "OK", [201] = "Created",
  [202] = "Accepted", [204] = "No Content", [206] = "Partial Content", [301] = "Moved Permanently",
  [302] = "Found", [303] = "See Other", [304] = "Not Modified", [307] = "Temporary Redirect",
  [308] = "Permanent Redirect", [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [413] = "Content Too Large", [415] = "Unsupported Media Type",
  [417] = "Expectation Failed", [422] = "Unprocessable Content", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported",
}
M.reasons = reasons

-- An error the server answers with `status` (and message as the body) instead of a 500.
local function http_error(status, message)
  return errors.new("http", message or reasons[status] or "error", {status = status})
end

-- Raises an error that the server turns into a `status` response: httpd.error(404, "no such run").
function M.error(status, message)
  if math.type(status) ~= "integer" then error("httpd.error: status must be an integer", 2) end
  error(http_error(status, message), 0)
end

---------------------------------------------------------------------------------------------------
-- small helpers

local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

local function url_decode(s, plus)
  if plus then s = s:gsub("+", " ") end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.url_decode = url_decode

-- "a=1&b=x+y" -> {a = "1", b = "x y"}; a repeated key keeps its last value.
local function parse_query(q)
  local t = {}
  for pair in q:gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    t[url_decode(k, true)] = url_decode(v, true)
  end
  return t
end
M.parse_query = parse_query

local date_at, date_text = -1, ""
local function http_date()
  local now = os.time()
  if now ~= date_at then date_at, date_text = now, os.date("!%a, %d %b %Y %H:%M:%S GMT", now) end
  return date_text
end

-- Does a comma-separated header value contain token (case-insensitive)?
local function has_token(value, token)
  if not value then return false end
  for part in value:gmatch("[^,]+") do
    if part:match("^%s*(.-)%s*$"):lower() == token then return true end
  end
  return false
end

-- A complete response for a request we refuse; the connection is closed after it.
local function refusal(status, message)
  local body = message .. "\n"
  return ("HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" ..
    "connection: close\r\ndate: %s\r\n\r\n%s"):format(status, reasons[status] or "Error", #body, http_date(), body)
end

---------------------------------------------------------------------------------------------------
-- requests

local Request = {}
Request.__index = Request

-- Reads the request line and headers. Returns a request, or nil (the client closed or went
-- idle: close quietly), or nil, err (err.status: answer with it and close).
local function read_head(srv, conn)
  local sock = conn.sock
  sock.timeout = srv.idle_timeout
  local line, err
  for _ = 1, 8 do                        -- empty lines before a request are allowed (RFC 9112 2.2)
    line, err = sock:read_line(srv.max_line)
    if line ~= "" then break end
  end
  if not line then
    if err and err.code == "line_too_long" then return nil, http_error(400, "request line too long") end
    return nil
  end
  sock.timeout = srv.io_timeout
  local method, target, major, minor = line:match("^(%S+) (%S+) HTTP/(%d)%.(%d)$")
  if not method or not method:match(TOKEN) then return nil, http_error(400, "malformed request line") end
  if major ~= "1" then return nil, http_error(505, "only HTTP/1.x is supported") end

  local headers, list = {}, {}
  while true do
    local h, herr = sock:read_line(srv.max_line)
    if not h then
      if herr and herr.code == "line_too_long" then return nil, http_error(400, "header line too long") end
      return nil
    end
    if h == "" then break end
    if #list >= srv.max_headers then return nil, http_error(400, "too many header lines") end
    local name, value = h:match("^([^:]+):[ \t]*(.-)[ \t]*$")
    if not name or not name:match(TOKEN) or value:find("[%z\r\n]") then
      return nil, http_error(400, "malformed header line")
    end
    name = name:lower()
    list[#list + 1] = {name, value}
    local old = headers[name]
    headers[name] = old and (old .. ", " .. value) or value
  end

  local req = setmetatable({method = method, target = target, version = major .. "." .. minor,
    headers = headers, header_list = list, peer = sock.peer, _sock = sock, _srv = srv,
    _received = 0}, Request)
  return req
end

-- Fills in path, query and the body framing; returns nil, err for a request we must refuse.
local function check_request(req)
  local target, raw = req.target, nil
  if target:sub(1, 1) == "/" then raw = target
  elseif target:match("^[%a][%w+.-]*://") then raw = target:match("^[%a][%w+.-]*://[^/?#]*(.*)$")
    if raw == "" then raw = "/" end
    if raw:sub(1, 1) ~= "/" then raw = "/" .. raw end
  elseif target == "*" and req.method == "OPTIONS" then raw = "*"
  else return nil, http_error(400, "malformed request target") end
  local path, query = raw:match("^([^?#]*)%??([^#]*)")
  req.path, req.query_string, req.query = url_decode(path), query, parse_query(query)

  local h = req.headers
  local te, cl = h["transfer-encoding"], h["content-length"]
  if te and cl then return nil, http_error(400, "both Content-Length and Transfer-Encoding") end
  if te then
    if req.version == "1.0" then return nil, http_error(400, "Transfer-Encoding in an HTTP/1.0 request") end
    if te:lower() ~= "chunked" then return nil, http_error(501, "transfer coding '" .. te .. "' is not supported") end
    req._chunked, req._chunk_left = true, 0
  elseif cl then
    if not cl:match("^%d+$") or #cl > 15 then return nil, http_error(400, "malformed Content-Length") end
    req._remaining = tonumber(cl)
  else
    req._remaining = 0
  end
  req._done = not req._chunked and req._remaining == 0

  local expect = h.expect
  if expect then
    if expect:lower() ~= "100-continue" then return nil, http_error(417, "only Expect: 100-continue is supported") end
    req._expect = req.version ~= "1.0"
  end
  local conn_header = h.connection
  if req.version == "1.0" then req._close = not has_token(conn_header, "keep-alive")
  else req._close = has_token(conn_header, "close") end
  return req
end

-- A failed body read: the connection cannot be reused; raise what the server should answer.
local function body_failed(req, err, status, message)
  req._failed = true
  if err and err.code == "timeout" then error(http_error(408, "request body timed out"), 0) end
  if status then error(http_error(status, message), 0) end
  error(errors.new("disconnected", ("client %s went away while sending the body%s"):format(
    req.peer, err and (": " .. errors.message(err)) or "")), 0)
end

local function send_continue(req)
  if req._expect and not req._continued then
    req._continued = true
    local res = req._res
    if not (res and res.started) then
      local ok, err = req._sock:write("HTTP/1.1 100 Continue\r\n\r\n")
      if not ok then body_failed(req, err) end
    end
  end
end

local function count(req, n)
  req._received = req._received + n
  if req._received > req._limit then
    body_failed(req, nil, 413, ("request body larger than %d bytes"):format(req._limit))
  end
end

local function read_trailers(req)
  local sock, srv = req._sock, req._srv
  for _ = 1, srv.max_headers + 1 do
    local line, err = sock:read_line(srv.max_line)
    if not line then body_failed(req, err, err and err.code == "line_too_long" and 400, "trailer line too long") end
    if line == "" then return end
  end
  body_failed(req, nil, 400, "too many trailer lines")
end

local function next_chunked(req)
  local sock = req._sock
  if req._chunk_left == 0 then
    local line, err = sock:read_line(1024)
    if not line then body_failed(req, err, err and err.code == "line_too_long" and 400, "chunk size line too long") end
    local hex, rest = line:match("^(%x+)(.*)$")
    if not hex or (rest ~= "" and not rest:match("^[ \t]*;")) then body_failed(req, nil, 400, "bad chunk size") end
    hex = hex:gsub("^0+(.)", "%1")
    if #hex > 13 then body_failed(req, nil, 400, "chunk size too large") end
    local size = tonumber(hex, 16)
    if size == 0 then
      read_trailers(req)
      req._done = true
      return nil
    end
    if req._received + size > req._limit then count(req, size) end
    req._chunk_left = size
  end
  local data, err = sock:read(math.min(req._chunk_left, CHUNK))
  if not data then body_failed(req, err) end
  req._chunk_left = req._chunk_left - #data
  count(req, #data)
  if req._chunk_left == 0 then
    local crlf, cerr = sock:read_line(0)    -- the CRLF after the chunk data; anything else is bad
    if not crlf then body_failed(req, cerr, cerr and cerr.code == "line_too_long" and 400, "chunk longer than its size") end
  end
  return data
end

local function next_piece(req)
  if req._done then return nil end
  send_continue(req)
  if req._chunked then return next_chunked(req) end
  if req._received + req._remaining > req._limit then count(req, req._remaining) end
  local data, err = req._sock:read(math.min(req._remaining, CHUNK))
  if not data then body_failed(req, err) end
  req._remaining = req._remaining - #data
  req._received = req._received + #data
  if req._remaining == 0 then req._done = true end
  return data
end

-- An iterator over the request body as it arrives: for piece in req:chunks() do ... end.
-- Errors (raised): 400 bad framing, 408 too slow, 413 larger than max (default: server max_body).
function Request:chunks(max)
  self._limit = max or self._limit
  return function() return next_piece(self) end
end

-- The whole request body as a string ("" when there is none); same errors as chunks().
function Request:body(max)
  if self._body then return self._body end
  local parts = {}
  for piece in self:chunks(max) do parts[#parts + 1] = piece end
  self._body = table.concat(parts)
  return self._body
end

-- Reads away what the handler left of the body, so the connection can serve the next request.
local function drain(req, limit)
  if req._done then return true end
  if req._failed or (req._expect and not req._continued) then return false end
  if not req._chunked and req._remaining > limit then return false end
  req._limit = math.min(req._limit, req._received + limit)
  local ok = pcall(function() while next_piece(req) do end end)
  return ok and req._done
end

---------------------------------------------------------------------------------------------------
-- responses

local Response = {}
Response.__index = Response

local function check_header(name, value)
  if type(name) ~= "string" or not name:match(TOKEN) then error("res:header: bad header name " .. tostring(name), 3) end
  if value ~= nil then
    value = tostring(value)
    if value:find("[%z\r\n]") then error("res:header: the value of " .. name .. " contains a line break", 3) end
  end
  return name:lower(), value
end

function Response:status(code, reason)
  if math.type(code) ~= "integer" or code < 100 or code > 999 then error("res:status: code must be an integer 100..999", 2) end
  if self.started then error("res:status: the response has already started", 2) end
  self._status, self._reason = code, reason
  return self
end

-- Sets a header (replacing earlier values; nil removes it).
function Response:header(name, value)
  name, value = check_header(name, value)
  if self.started then error("res:header: the response has already started", 2) end
  local hs = self._headers
  for i = #hs, 1, -1 do if hs[i][1] == name then table.remove(hs, i) end end
  if value then hs[#hs + 1] = {name, value} end
  return self
end

-- Adds a header line, keeping earlier ones with the same name (set-cookie).
function Response:add_header(name, value)
  name, value = check_header(name, value)
  if self.started then error("res:add_header: the response has already started", 2) end
  self._headers[#self._headers + 1] = {name, value}
  return self
end

function Response:get_header(name)
  name = name:lower()
  for _, h in ipairs(self._headers) do if h[1] == name then return h[2] end end
  return nil
end

local function bodyless(status) return status < 200 or status == 204 or status == 304 end

local function put(res, data)
  if res._err then return nil, res._err end
  local ok, err = res._sock:write(data)
  if not ok then res._err, res._close = err, true; return nil, err end
  return true
end

local function head_bytes(res)
  local req, srv = res._req, res._req._srv
  if req._close or req._failed or srv.closing then res._close = true end
  -- a body the client holds back (Expect) or that is too large to read away: no next request
  if not req._done and ((req._expect and not req._continued) or
      (not req._chunked and req._remaining > srv.drain_limit)) then res._close = true end
  if res._close then res:header("connection", "close")
  elseif req.version == "1.0" then res:header("connection", "keep-alive") end
  if not res:get_header("date") then res:header("date", http_date()) end
  local parts = {("HTTP/1.1 %d %s\r\n"):format(res._status, res._reason or reasons[res._status] or "Unknown")}
  for _, h in ipairs(res._headers) do parts[#parts + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  parts[#parts + 1] = "\r\n"
  return table.concat(parts)
end

-- Sends the whole response with body (default ""); sets content-length. Returns true or nil, err.
function Response:send(body)
  body = body == nil and "" or body
  if type(body) ~= "string" then error("res:send: body must be a string", 2) end
  if self.started then error("res:send: the response has already started (use res:write and res:finish)", 2) end
  local status = self._status
  if bodyless(status) then body = ""; self:header("content-length", nil)
  else self:header("content-length", #body) end
  self:header("transfer-encoding", nil)
  local head = head_bytes(self)
  self.started, self.finished = true, true
  if self._req.method == "HEAD" or #body == 0 then return put(self, head) end
  if #body <= CHUNK then return put(self, head .. body) end
  local ok, err = put(self, head)
  if not ok then return nil, err end
  return put(self, body)
end

-- Sends the status and headers of a streamed response: chunked transfer encoding unless the
-- handler set content-length (HTTP/1.0 clients: the body ends when the connection closes).
function Response:start()
  if self.started then return true end
  local req = self._req
  self._nobody = req.method == "HEAD" or bodyless(self._status)
  if not self._nobody and not self:get_header("content-length") then
    if req.version == "1.0" then self._close = true
    else self:header("transfer-encoding", "chunked"); self._chunked = true end
  end
  self._sent, self._declared = 0, tonumber(self:get_header("content-length"))
  local head = head_bytes(self)
  self.started = true
  return put(self, head)
end

-- Sends a piece of a streamed response (starting it if needed). Returns true, or nil, err when
-- the client is gone or too slow: the handler should stop then.
function Response:write(data)
  if type(data) ~= "string" then error("res:write: data must be a string", 2) end
  if self.finished then error("res:write: the response is finished", 2) end
  if not self.started then
    local ok, err = self:start()
    if not ok then return nil, err end
  end
  if #data == 0 or self._nobody then return true end
  if self._chunked then data = ("%x\r\n"):format(#data) .. data .. "\r\n"
  else
    self._sent = self._sent + #data
    if self._declared and self._sent > self._declared then
      error("res:write: more bytes than the content-length header declares", 2)
    end
  end
  return put(self, data)
end

-- Ends the response (for a response that never started: sends it with an empty body).
function Response:finish()
  if self.finished then return self._err == nil or nil, self._err end
  if not self.started then return self:send("") end
  self.finished = true
  if self._chunked then return put(self, "0\r\n\r\n") end
  -- a body shorter than the content-length the handler declared leaves the client waiting
  if self._declared and not self._nobody and self._sent ~= self._declared then self._close = true end
  return self._err == nil or nil, self._err
end

-- Starts a server-sent events stream (content-type text/event-stream, no caching).
function Response:sse_start()
  if not self:get_header("content-type") then self:header("content-type", "text/event-stream") end
  if not self:get_header("cache-control") then self:header("cache-control", "no-cache") end
  return self:start()
end

local function one_line(v, field)
  v = tostring(v)
  if v:find("[\r\n]") then error("res:sse: " .. field .. " must be one line", 3) end
  return v
end

-- Formats one event: ev is a table {event=, data=, id=, retry=, comment=} or a data string.
function M.sse_event(ev)
  if type(ev) ~= "table" then ev = {data = ev} end
  local out = {}
  if ev.comment then
    for line in (tostring(ev.comment):gsub("\r\n?", "\n") .. "\n"):gmatch("(.-)\n") do out[#out + 1] = ": " .. line .. "\n" end
  end
  if ev.event then out[#out + 1] = "event: " .. one_line(ev.event, "event") .. "\n" end
  if ev.id then out[#out + 1] = "id: " .. one_line(ev.id, "id") .. "\n" end
  if ev.retry then
    if math.type(ev.retry) ~= "integer" then error("res:sse: retry must be an integer (milliseconds)", 2) end
    out[#out + 1] = "retry: " .. ev.retry .. "\n"
  end
  if ev.data ~= nil then
    for line in (tostring(ev.data):gsub("\r\n?", "\n") .. "\n"):gmatch("(.-)\n") do out[#out + 1] = "data: " .. line .. "\n" end
  end
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- Sends one server-sent event (starting the stream if needed). Returns true or nil, err.
function Response:sse(ev)
  if not self.started then
    local ok, err = self:sse_start()
    if not ok then return nil, err end
  end
  return self:write(M.sse_event(ev))
end

---------------------------------------------------------------------------------------------------
-- connections

local function log(srv, msg)
  srv.log(msg)
end

local function run_handler(srv, req, res)
  return srv.handler(req, res)
end

-- Sends what the handler left unsent or unfinished, or the error response.
local function conclude(srv, req, res, ok, err, task)
  if ok then
    if not res.finished then res:finish() end
    return
  end
  local quiet = errors.is(err, "cancelled") or errors.is(err, "disconnected")
  local status = errors.is(err, "http") and err.status
  if not quiet and not status then
    log(srv, ("handler failed on %s %s: %s"):format(req.method, req.target, task.traceback or errors.message(err)))
    status = 500
  end
  if res.started or quiet then
    res._close = true           -- a half-sent response cannot be repaired: the client sees the close
    return
  end
  res._headers = {}
  res._status, res._reason = status, nil
  if status >= 500 then res._close = true end
  res:header("content-type", "text/plain; charset=utf-8")
  res:send(status == 500 and "internal server error\n" or (errors.message(err) .. "\n"))
end

-- Serves one request; returns true if the connection may carry another one.
local function serve_one(srv, conn, req)
  local res = setmetatable({_status = 200, _headers = {}, _req = req, _sock = conn.sock, started = false,
    finished = false}, Response)
  req._res, req._limit = res, srv.max_body
  local task = sched.spawn(run_handler, srv, req, res)
  task.name = "httpd " .. req.method .. " " .. req.target
  conn.handler = task
  local ok, err = task:wait()
  conn.handler = nil
  conclude(srv, req, res, ok, err, task)
  if res._close or res._err or req._close or req._failed or srv.closing then return false end
  return drain(req, srv.drain_limit)
end

local function serve_conn(srv, conn)
  while not srv.closing do
    conn.idle = true
    local req, err = read_head(srv, conn)
    conn.idle = false
    if req then req, err = check_request(req) end
    if not req then
      if err then conn.sock:write(refusal(err.status, errors.message(err))) end
      return
    end
    if not serve_one(srv, conn, req) then return end
  end
end

local function conn_main(srv, conn)
  local ok, err = pcall(serve_conn, srv, conn)
  local h = conn.handler
  if h and not h:done() then          -- we were cancelled while a handler ran: end it first
    h:cancel("server closed")
    h:wait()
  end
  conn.sock:close()
  srv.conns[conn] = nil
  srv.nconns = srv.nconns - 1
  srv.room:set()
  if not ok and not errors.is(err, "cancelled") then
    log(srv, ("connection from %s failed: %s"):format(conn.sock.peer, errors.message(err)))
  end
end

local function accept_loop(srv)
  while not srv.closing do
    if srv.nconns >= srv.max_connections then
      srv.room:clear()
      srv.room:wait()
    else
      local sock, err = srv.listener:accept()
      if sock then
        local conn = {sock = sock}
        srv.conns[conn] = true
        srv.nconns = srv.nconns + 1
        conn.task = sched.spawn(conn_main, srv, conn)
        conn.task.name = "httpd connection " .. sock.peer
      elseif srv.closing or err.code == "closed" then
        return
      else
        log(srv, errors.message(err))     -- e.g. out of file descriptors: wait for some to close
        sched.sleep(0.1)
      end
    end
  end
end

-- However the accept loop ends (srv:close, or cancelled when the program shuts down), the
-- listener closes, so a unix socket file does not outlive the server.
local function accept_main(srv)
  local ok, err = pcall(accept_loop, srv)
  srv.closing = true
  srv.listener:close()
  if not ok then error(err, 0) end
end

---------------------------------------------------------------------------------------------------
-- the server

local Server = {}
Server.__index = Server

-- Stops the server: no new connections, idle connections are closed at once, requests in flight
-- get `grace` seconds (default 0) to finish and are then cancelled. Parks until every connection
-- task has ended and its socket is closed.
function Server:close(opts)
  local grace = opts and opts.grace or self.grace
  local me = sched.current()
  for conn in pairs(self.conns) do
    if conn.handler == me then    -- called by a handler: closing waits for that handler, so do it aside
      sched.spawn(self.close, self, opts)
      return true
    end
  end
  if self.closing then
    while not self.accept_task:done() or next(self.conns) do sched.sleep(0.01) end
    return true
  end
  self.closing = true
  self.listener:close()           -- wakes the accept loop
  self.room:set()
  for conn in pairs(self.conns) do
    if conn.idle then conn.sock:close() end   -- waiting for a request: nothing is lost
  end
  local until_t = sched.now() + grace
  while next(self.conns) and sched.now() < until_t do sched.sleep(0.01) end
  local left = {}
  for conn in pairs(self.conns) do left[#left + 1] = conn.task end
  for _, t in ipairs(left) do t:cancel("server closed") end
  self.accept_task:wait()
  for _, t in ipairs(left) do t:wait() end
  return true
end

Server.__close = function(s) s:close() end
Server.__tostring = function(s) return "httpd server " .. s.address end

-- How many connections are open now.
function Server:connections() return self.nconns end

-- serve(opts, handler) -> server | nil, err. opts: host (default "127.0.0.1", "*" for every
-- interface), port (0: any free port), or unix = path; plus the limits in httpd.defaults and
-- log = function(msg) (default: stderr). handler(req, res) runs in a task of its own per request.
function M.serve(opts, handler)
  if type(opts) ~= "table" then error("httpd.serve: opts must be a table {host=, port=} or {unix=}", 2) end
  if type(handler) ~= "function" and not (getmetatable(handler) or {}).__call then
    error("httpd.serve: handler must be a function(req, res)", 2)
  end
  local listener, err = net.listen{host = opts.host, port = opts.port, unix = opts.unix, backlog = opts.backlog}
  if not listener then return nil, err end
  local srv = setmetatable({listener = listener, handler = handler, conns = {}, nconns = 0,
    room = sched.event(), closing = false, port = listener.port, unix = listener.unix,
    address = listener.address}, Server)
  for k, v in pairs(M.defaults) do
    if opts[k] ~= nil then srv[k] = opts[k] else srv[k] = v end
  end
  srv.log = opts.log or function(msg) io.stderr:write("runbox.httpd: ", msg, "\n") end
  if listener.unix then srv.url = "http://localhost"
  else
    local host = listener.host == "*" and "127.0.0.1" or listener.host
    if host:find(":", 1, true) then host = "[" .. host .. "]" end
    srv.url = ("http://%s:%d"):format(host, listener.port)
  end
  srv.accept_task = sched.spawn(accept_main, srv)
  srv.accept_task.name = "httpd accept " .. listener.address
  return srv
end

---------------------------------------------------------------------------------------------------
-- router

local function compile_route(key, fn)
  if type(key) ~= "string" then error("httpd.router: route keys must be strings like 'GET /path'", 3) end
  local method, path = key:match("^(%S+)%s+(/%S*)$")
  if not method then error("httpd.router: route '" .. key .. "' must look like 'GET /path'", 3) end
  if type(fn) ~= "function" then error("httpd.router: route '" .. key .. "' needs a function(req, res)", 3) end
  local segs, literal, rest = {}, 0, false
  for seg in path:gmatch("[^/]+") do segs[#segs + 1] = seg end
  if segs[#segs] == "*" then segs[#segs] = nil; rest = true end
  for _, s in ipairs(segs) do if s:sub(1, 1) ~= ":" then literal = literal + 1 end end
  return {method = method, segs = segs, rest = rest, literal = literal, fn = fn, key = key,
    trailing = path ~= "/" and path:sub(-1) == "/" and not rest}
end

local function match_route(r, parts, path)
  local n = #r.segs
  if #parts < n or (#parts > n and not r.rest) then return nil end
  if r.trailing ~= (path:sub(-1) == "/" and path ~= "/") and not r.rest then return nil end
  local params = {}
  for i = 1, n do
    local s = r.segs[i]
    if s:sub(1, 1) == ":" then params[s:sub(2)] = parts[i]
    elseif s ~= parts[i] then return nil end
  end
  if r.rest then params["*"] = table.concat(parts, "/", n + 1) end
  return params
end

local function not_found(req, res)
  res:status(404):header("content-type", "text/plain; charset=utf-8"):send("not found\n")
end

-- router{["GET /health"] = fn, ["POST /v1/items/:id"] = fn, ["GET /files/*"] = fn, ["* /any"] = fn}
-- -> handler. ":name" captures a segment into req.params.name, a final "*" the rest of the path
-- (req.params["*"]); "*" as method matches any. HEAD uses the GET route. No route: opts.not_found
-- or 404; a path served only for other methods: 405 with an allow header.
function M.router(routes, opts)
  if type(routes) ~= "table" then error("httpd.router: routes must be a table", 2) end
  local list = {}
  for key, fn in pairs(routes) do list[#list + 1] = compile_route(key, fn) end
  table.sort(list, function(a, b)
    if a.rest ~= b.rest then return not a.rest end
    if a.literal ~= b.literal then return a.literal > b.literal end
    if #a.segs ~= #b.segs then return #a.segs > #b.segs end
    return a.key < b.key
  end)
  local fallback = opts and opts.not_found or not_found
  return function(req, res)
    local parts = {}
    for seg in req.path:gmatch("[^/]+") do parts[#parts + 1] = seg end
    local allowed, found = {}, nil
    for _, r in ipairs(list) do
      local params = match_route(r, parts, req.path)
      if params then
        local m = r.method
        if m == req.method or m == "*" or (req.method == "HEAD" and m == "GET") then
          found = found or {r, params}
        else
          allowed[#allowed + 1] = m
        end
      end
    end
    if found then
      req.params = found[2]
      return found[1].fn(req, res)
    end
    if #allowed > 0 then
      table.sort(allowed)
      res:status(405):header("allow", table.concat(allowed, ", "))
      res:header("content-type", "text/plain; charset=utf-8"):send("method not allowed\n")
      return
    end
    return fallback(req, res)
  end
end

return M
