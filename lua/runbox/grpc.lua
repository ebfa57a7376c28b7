-- gRPC client: unary and server-streaming calls over HTTP/2 (runbox.h2: cleartext prior knowledge
-- for http:// targets, TLS with ALPN for https://, unix sockets). Calls from many tasks to one
-- target share one connection (more when the server limits the streams per connection).
--
--   local ch = grpc.channel("http://127.0.0.1:50051", {metadata = {["x-client"] = "runbox"}})
--   local reply, err = ch:unary("/pkg.Echo/Say", request_bytes, {timeout = 5})
--   local st = ch:server_stream("/pkg.Echo/Watch", request_bytes)
--   for msg in st:messages() do ... end
--
-- Messages are bytes, or tables encoded and decoded with runbox.pb when the call's options name
-- schemas (request = S.Req, response = S.Resp). Failures are errors.new("grpc", ...) objects with
-- grpc_code, grpc_status ("UNAVAILABLE"), grpc_message and metadata (the trailers).
local h2 = require "runbox.h2"
local errors = require "runbox.errors"

local M = {}

M.user_agent = "runbox-grpc/0.1"
M.max_message = 64 * 1024 * 1024

M.codes = {
  OK = 0, CANCELLED = 1, UNKNOWN = 2, INVALID_ARGUMENT = 3, DEADLINE_EXCEEDED = 4, NOT_FOUND = 5,
  ALREADY_EXISTS = 6, PERMISSION_DENIED = 7, RESOURCE_EXHAUSTED = 8, FAILED_PRECONDITION = 9,
  ABORTED = 10, OUT_OF_RANGE = 11, UNIMPLEMENTED = 12, INTERNAL = 13, UNAVAILABLE = 14,
  DATA_LOSS = 15, UNAUTHENTICATED = 16,
}
local NAMES = {}
for name, code in pairs(M.codes) do NAMES[code] = name end

-- "UNAVAILABLE" for 14; "UNKNOWN(99)" for a code gRPC does not define.
function M.status_name(code)
  return NAMES[code] or ("UNKNOWN(%s)"):format(tostring(code))
end

-- The gRPC code for an HTTP status of a response that carries no grpc-status (as gRPC maps it).
local HTTP_CODES = {[400] = 13, [401] = 16, [403] = 7, [404] = 12, [429] = 14, [502] = 14, [503] = 14, [504] = 14}
function M.code_for_http_status(status)
  return HTTP_CODES[status] or 2
end

-- An error object for a failed call.
function M.error(code, message, path, metadata)
  local status = M.status_name(code)
  local text = ("%s: %s"):format(status, message ~= "" and message or "(no message)")
  if path then text = text .. " (" .. path .. ")" end
  return errors.new("grpc", text, {grpc_code = code, grpc_status = status, grpc_message = message,
                                   metadata = metadata or {}, path = path})
end

---------------------------------------------------------------------------------------------------
-- encodings

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64INV = {}
for i = 1, 64 do B64INV[B64:byte(i)] = i - 1 end
B64INV[("-"):byte()], B64INV[("_"):byte()] = 62, 63

-- Binary metadata ("-bin" keys) travels base64-encoded (unpadded, as gRPC sends it).
local function b64encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = b and (c and 4 or 3) or 2
    local chunk = {}
    for j = 1, k do
      local v = (n >> (18 - 6 * (j - 1))) & 63
      chunk[j] = B64:sub(v + 1, v + 1)
    end
    out[#out + 1] = table.concat(chunk)
  end
  return table.concat(out)
end

local function b64decode(s)
  local out, bits, nbits = {}, 0, 0
  for i = 1, #s do
    local v = B64INV[s:byte(i)]
    if v then
      bits, nbits = (bits << 6) | v, nbits + 6
      if nbits >= 8 then
        nbits = nbits - 8
        out[#out + 1] = string.char((bits >> nbits) & 255)
      end
    end
  end
  return table.concat(out)
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- grpc-timeout: at most 8 digits and a unit.
local function timeout_header(seconds)
  local ms = math.ceil(seconds * 1000)
  if ms < 1e8 then return ("%dm"):format(ms) end
  local s = math.ceil(seconds)
  if s < 1e8 then return ("%dS"):format(s) end
  return ("%dH"):format(math.min(math.ceil(seconds / 3600), 99999999))
end

-- Metadata as the server sent it: lowercase keys, "-bin" values decoded.
local function metadata_of(map)
  local md = {}
  for k, v in pairs(map or {}) do
    md[k] = k:sub(-4) == "-bin" and b64decode(v) or v
  end
  return md
end

local RESERVED = {["content-type"] = true, te = true, ["grpc-timeout"] = true, ["user-agent"] = true}

local function add_metadata(headers, md, where)
  for k, v in pairs(md or {}) do
    if type(k) ~= "string" then error(where .. ": metadata keys must be strings", 4) end
    local key = k:lower()
    if RESERVED[key] or key:sub(1, 1) == ":" then
      error(("%s: metadata key %q is reserved by gRPC"):format(where, k), 4)
    end
    if type(v) ~= "string" then error(("%s: metadata value of %q must be a string"):format(where, k), 4) end
    headers[key] = key:sub(-4) == "-bin" and b64encode(v) or v
  end
end

local function pb()
  local ok, mod = pcall(require, "runbox.pb")
  if not ok then error("grpc: message schemas need runbox.pb, which is not available: " .. tostring(mod), 4) end
  return mod
end

---------------------------------------------------------------------------------------------------
-- calls

local Call = {}
Call.__index = Call
Call.__close = function(c) c:close() end

-- gRPC codes for RST_STREAM error codes (as gRPC maps them); other resets are INTERNAL.
local RESET_CODES = {[0x7] = 14, [0x8] = 1, [0xb] = 8, [0xc] = 7}

-- Turns a failed HTTP/2 stream into a gRPC error: what happened to the connection or the stream is
-- in the message, and its kind in err.transport.
local function transport_error(err, path, timeout)
  if errors.is(err, "timeout") then
    return M.error(M.codes.DEADLINE_EXCEEDED, ("no answer within the call's timeout of %gs"):format(timeout or 0), path)
  end
  local kind = err.kind
  local code = M.codes.UNAVAILABLE
  if kind == "reset" then code = RESET_CODES[err.h2_code] or M.codes.INTERNAL
  elseif kind == "protocol" then code = M.codes.INTERNAL
  elseif kind == "cancelled" then code = M.codes.CANCELLED end
  local e = M.error(code, errors.message(err))
  e.path, e.transport, e.h2_code = path, kind, err.h2_code
  return e
end

-- The status a finished response carries: from the trailers, else from the headers (a
-- trailers-only response). nil when there is none.
local function status_of(call)
  for _, map in ipairs{call.resp.trailers or {}, call.resp.headers} do
    local s = map["grpc-status"]
    if s then return tonumber(s) or M.codes.UNKNOWN, percent_decode(map["grpc-message"] or ""), map end
  end
end

function Call:_fail(err)
  self.finished, self.err = true, err
  self.resp:close()
  return nil, err
end

-- Received bytes not yet framed: the chunks, an offset into the first one, the unread count.
function Call:_merge()
  local parts = self.parts
  parts[1] = parts[1]:sub(self.off)
  local whole = table.concat(parts)
  self.parts, self.off = {whole}, 1
  return whole
end

function Call:_add(chunk)
  if chunk == "" then return end
  self.parts[#self.parts + 1] = chunk
  self.buflen = self.buflen + #chunk
end

-- Next complete frame from the received bytes: the message, false (need more), or nil, err.
function Call:_frame()
  if self.buflen < 5 then return false end
  local first, off = self.parts[1], self.off
  if #first - off + 1 < 5 then first, off = self:_merge(), 1 end
  local flag, len = string.unpack(">I1I4", first, off)
  if flag ~= 0 then
    local enc = self.resp.headers["grpc-encoding"]
    if flag == 1 and enc and enc ~= "identity" then
      return nil, M.error(M.codes.UNIMPLEMENTED, ("compressed message (grpc-encoding %s) is not supported"):format(enc), self.path)
    end
    return nil, M.error(M.codes.INTERNAL, ("malformed gRPC frame: flag byte %d%s"):format(flag,
      flag == 1 and " (compressed) without grpc-encoding" or ""), self.path)
  end
  if len > self.max_message then
    return nil, M.error(M.codes.RESOURCE_EXHAUSTED, ("malformed gRPC frame: a message of %d bytes is over the limit of %d bytes (option max_message)")
      :format(len, self.max_message), self.path)
  end
  local need = 5 + len
  if self.buflen < need then return false end
  if #first - off + 1 < need then first, off = self:_merge(), 1 end
  local msg = first:sub(off + 5, off + need - 1)
  self.off, self.buflen = off + need, self.buflen - need
  if self.off > #first then
    table.remove(self.parts, 1)
    self.off = 1
  end
  return msg
end

function Call:_decode(msg)
  if not self.response_schema then return msg end
  local tbl, err = pb().decode(self.response_schema, msg)
  if tbl == nil then
    return self:_fail(M.error(M.codes.INTERNAL, "cannot decode the response message: " .. errors.message(err), self.path))
  end
  return tbl
end

-- The end of the response body: the call's status decides.
function Call:_end()
  self.finished = true
  if self.buflen > 0 then
    return self:_fail(M.error(M.codes.INTERNAL, ("malformed gRPC frame: the stream ended inside a frame (%d bytes left)")
      :format(self.buflen), self.path))
  end
  local code, message, map = status_of(self)
  self.trailers = metadata_of(self.resp.trailers)
  if not code then
    return self:_fail(M.error(M.codes.INTERNAL, "the server ended the stream without a grpc-status", self.path, self.trailers))
  end
  self.status, self.message = code, message
  self.metadata = metadata_of(map)
  if code ~= 0 then return self:_fail(M.error(code, message, self.path, metadata_of(map))) end
  return nil
end

-- Next message of the call; nil at the end (then call.status is 0); nil, err when it failed.
function Call:recv()
  if self.finished then return nil, self.err end
  while true do
    local msg, err = self:_frame()
    if msg then return self:_decode(msg) end
    if msg == nil then return self:_fail(err) end
    local chunk, rerr = self.resp:read()
    if chunk then self:_add(chunk)
    elseif rerr then
      -- a server may answer and reset the stream while the request is still being sent: once
      -- the status arrived, it is the answer
      if status_of(self) then return self:_end() end
      return self:_fail(transport_error(rerr, self.path, self.timeout))
    else return self:_end() end
  end
end

-- Iterator over the messages; raises the call's error if it fails.
function Call:messages()
  return function()
    local msg, err = self:recv()
    if err then error(err, 0) end
    return msg
  end
end

-- Stops the call (the stream is reset if still open).
function Call:close()
  self.resp:close()
  if not self.finished then
    self.finished = true
    self.err = M.error(M.codes.CANCELLED, "the call was closed", self.path)
  end
end

---------------------------------------------------------------------------------------------------
-- channels

local Channel = {}
Channel.__index = Channel

local CALL_OPTIONS = {metadata = "table", timeout = "number", request = "schema", response = "schema",
                      max_message = "number"}

local function check_call_opts(opts, where)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(where .. ": options must be a table", 3) end
  for k, v in pairs(opts) do
    local want = CALL_OPTIONS[k]
    if not want then error(("%s: unknown option '%s'"):format(where, tostring(k)), 3) end
    local ok = want == "schema" and (type(v) == "userdata" or type(v) == "table") or type(v) == want
    if not ok then error(("%s: option '%s' must be a %s"):format(where, k, want == "schema" and "runbox.pb message schema" or want), 3) end
  end
  return opts
end

-- Starts a call and waits for the response headers. Returns the call or nil, err.
function Channel:_start(path, request, opts, where)
  if type(path) ~= "string" or not path:match("^/[^/]+/[^/]+$") then
    error(where .. ": method path must look like \"/package.Service/Method\", got " .. tostring(path), 3)
  end
  opts = check_call_opts(opts, where)
  local body = request
  if opts.request then
    local bytes, err = pb().encode(opts.request, request)
    if not bytes then return nil, M.error(M.codes.INTERNAL, "cannot encode the request: " .. errors.message(err), path) end
    body = bytes
  elseif type(request) ~= "string" then
    error(where .. ": request must be a string of bytes (or give a schema as option 'request')", 3)
  end
  local headers = {["content-type"] = "application/grpc", te = "trailers", ["user-agent"] = M.user_agent}
  add_metadata(headers, self.metadata, where)
  add_metadata(headers, opts.metadata, where)
  local timeout = opts.timeout or self.timeout
  if timeout then headers["grpc-timeout"] = timeout_header(timeout) end
  local st = h2.request(self.h2, {method = "POST", path = path, headers = headers, timeout = timeout,
                                 body = string.pack(">I1s4", 0, body)})
  local resp, err = st:response()
  if not resp then return nil, transport_error(err, path, timeout) end
  local call = setmetatable({resp = resp, path = path, parts = {}, off = 1, buflen = 0,
                             max_message = opts.max_message or self.max_message,
                             response_schema = opts.response, timeout = timeout}, Call)
  call.headers = metadata_of(resp.headers)
  if resp.status ~= 200 then
    local code, message, map = status_of(call)
    resp:close()
    if not code then
      code, message = M.code_for_http_status(resp.status), ("HTTP status %d"):format(resp.status)
    end
    return nil, M.error(code, message, path, metadata_of(map))
  end
  local ctype = resp.headers["content-type"] or ""
  if not ctype:match("^application/grpc") then
    resp:close()
    return nil, M.error(M.codes.UNKNOWN, ("the response is not gRPC (content-type %q)"):format(ctype), path)
  end
  return call
end

-- A server-streaming call: returns the call (call:recv(), call:messages(), call.status,
-- call.headers, call.trailers, call:close()) or nil, err.
function Channel:server_stream(path, request, opts)
  return self:_start(path, request, opts, "grpc server_stream")
end

-- A unary call: returns the reply, nil and the finished call (headers and trailers as metadata),
-- or nil, err.
function Channel:unary(path, request, opts)
  local call, err = self:_start(path, request, opts, "grpc unary")
  if not call then return nil, err end
  local guard <close> = call
  local reply
  reply, err = call:recv()
  if reply == nil then
    return nil, err or M.error(M.codes.UNIMPLEMENTED, "the server sent no reply message", path, call.trailers)
  end
  local extra
  extra, err = call:recv()
  if err then return nil, err end
  if extra ~= nil then return nil, M.error(M.codes.UNIMPLEMENTED, "the server sent more than one reply message", path) end
  return reply, nil, call
end

local CHANNEL_OPTIONS = {metadata = "table", timeout = "number", insecure = "boolean", ca_file = "string",
                         max_message = "number", connect_timeout = "number"}

-- A channel to target: "http://host:port" (cleartext HTTP/2), "https://host:port" (TLS) or
-- "unix:/path/to.sock" (cleartext HTTP/2 over a unix socket). Options: metadata (sent with every
-- call), timeout (default per call, seconds), insecure, ca_file, max_message (bytes),
-- connect_timeout.
function M.channel(target, opts)
  if type(target) ~= "string" then error("grpc.channel: target must be a string", 2) end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = CHANNEL_OPTIONS[k]
    if not want then error(("grpc.channel: unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= want then error(("grpc.channel: option '%s' must be a %s"):format(k, want), 2) end
  end
  local ch = setmetatable({metadata = opts.metadata, timeout = opts.timeout, insecure = opts.insecure,
                           ca_file = opts.ca_file, max_message = opts.max_message or M.max_message,
                           connect_timeout = opts.connect_timeout, target = target}, Channel)
  if not (target:match("^unix:.") or target:match("^https?://")) then
    error("grpc.channel: target must start with http://, https:// or unix:, got " .. target, 2)
  end
  ch.h2 = h2.target(target, {ca_file = opts.ca_file, insecure = opts.insecure, connect_timeout = opts.connect_timeout})
  return ch
end

return M
