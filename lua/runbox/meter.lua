-- The metering proxy: sits between an agent and its model endpoint, forwards every request and
-- streams every answer back unchanged, and counts the usage each answer reports as it streams by
-- (Responses API `response.completed`, Chat Completions `usage`, plain JSON bodies). Past the
-- token limit it calls on_limit (the runner stops the agent) and refuses further requests.
--
-- The agent never sees the real API key: it gets a per-run token, and the proxy sends the real key
-- upstream. Each request is written to traces.jsonl (timings, sizes, usage; no headers, no bodies).
local httpd = require "runbox.httpd"
local http = require "runbox.http"
local json = require "runbox.json"
local fs = require "runbox.fs"
local util = require "runbox.util"
local sched = require "runbox.sched"

local M = {}

-- Headers that belong to one hop, or that the proxy sets itself.
local HOP = {["connection"] = true, ["keep-alive"] = true, ["transfer-encoding"] = true, ["te"] = true,
             ["trailer"] = true, ["upgrade"] = true, ["proxy-authorization"] = true, ["host"] = true,
             ["content-length"] = true, ["accept-encoding"] = true, ["content-encoding"] = true,
             ["authorization"] = true}

-- Tokens as codex counts them ("tokens used"): input not served from cache, plus output.
local function counted(u) return (u.input or 0) - (u.cached or 0) + (u.output or 0) end

-- Normalises the usage objects of the Responses and Chat Completions APIs.
local function usage_of(u)
  if type(u) ~= "table" then return nil end
  local input = u.input_tokens or u.prompt_tokens
  local output = u.output_tokens or u.completion_tokens
  if not input and not output then return nil end
  local in_details = u.input_tokens_details or u.prompt_tokens_details or {}
  local out_details = u.output_tokens_details or u.completion_tokens_details or {}
  return {input = input or 0, output = output or 0, cached = in_details.cached_tokens or 0,
          reasoning = out_details.reasoning_tokens or 0}
end

-- Finds usage in one decoded event or body.
local function usage_in(v)
  if type(v) ~= "table" then return nil end
  return usage_of(v.usage) or (type(v.response) == "table" and usage_of(v.response.usage)) or nil
end

-- Reads server-sent events out of a stream of chunks: feed(chunk) calls on_data(data) per event.
local function sse_reader(on_data)
  local buf = ""
  return function(chunk)
    buf = buf .. chunk:gsub("\r\n", "\n")
    while true do
      local stop = buf:find("\n\n", 1, true)
      if not stop then break end
      local block = buf:sub(1, stop - 1)
      buf = buf:sub(stop + 2)
      local data = {}
      for line in block:gmatch("[^\n]+") do
        local d = line:match("^data: ?(.*)")
        if d then data[#data + 1] = d end
      end
      if #data > 0 then on_data(table.concat(data, "\n")) end
    end
    if #buf > 4 * 1024 * 1024 then buf = "" end   -- an endless event: not SSE as we know it
  end
end

local Meter = {}
Meter.__index = Meter

function Meter:record(trace)
  if self.closed then return end     -- a late request of a run that has ended
  self.requests = self.requests + 1
  if trace.usage then
    local u, t = trace.usage, self.totals
    t.input, t.output = t.input + u.input, t.output + u.output
    t.cached, t.reasoning = t.cached + u.cached, t.reasoning + u.reasoning
    t.counted = t.counted + counted(u)
  end
  if self.traces_path then fs.append(self.traces_path, json.encode(trace) .. "\n") end
  if self.token_limit and not self.limit_hit and self.totals.counted > self.token_limit then
    self.limit_hit = true
    if self.on_limit then sched.spawn(self.on_limit, self.totals) end
  end
end

-- Totals so far: {input, output, cached, reasoning, counted, requests}.
function Meter:usage()
  local t = {}
  for k, v in pairs(self.totals) do t[k] = v end
  t.requests = self.requests
  return t
end

local function refuse(res, status, message)
  res:status(status):header("content-type", "application/json")
  res:send(json.encode{error = {message = message, type = "runbox_proxy", code = "runbox_" .. status}})
end

function Meter:handle(req, res)
  if self.client_token then
    local auth = req.headers.authorization or ""
    if auth ~= "Bearer " .. self.client_token then return refuse(res, 401, "unknown client token") end
  end
  if self.limit_hit then
    return refuse(res, 429, ("token limit of %d reached (%d used)"):format(self.token_limit, self.totals.counted))
  end
  local t0 = sched.now()
  local body = req:body()
  local headers = {}
  for _, h in ipairs(req.header_list) do
    if not HOP[h[1]] then headers[#headers + 1] = h[1] .. ": " .. h[2] end
  end
  local auth = self.api_key and ("Bearer " .. self.api_key) or req.headers.authorization
  if auth then headers[#headers + 1] = "authorization: " .. auth end
  local model
  do
    local decoded = json.decode(body)
    model = type(decoded) == "table" and decoded.model or nil
  end
  local trace = {ts = util.iso8601(), method = req.method, path = req.path, model = model,
                 request_bytes = #body}
  local resp, err = http.request{method = req.method, url = self.upstream .. req.target:gsub("^" .. self.prefix, ""),
                                 headers = headers, body = body, stream = true, timeout = self.timeout}
  if not resp then
    trace.error, trace.duration_ms = tostring(err), math.floor((sched.now() - t0) * 1000)
    self:record(trace)
    return refuse(res, 502, "upstream: " .. tostring(err))
  end
  trace.status = resp.status
  res:status(resp.status)
  for _, h in ipairs(resp.header_list) do
    local name = h.name:lower()
    if not HOP[name] then res:header(name, h.value) end
  end
  res:start()
  local is_sse = (resp.headers["content-type"] or ""):find("text/event-stream", 1, true)
  local whole, bytes = {}, 0
  local feed = sse_reader(function(data)
    local u = usage_in(json.decode(data))
    if u then trace.usage = u end
  end)
  for chunk in resp:chunks() do
    if not trace.ttfb_ms then trace.ttfb_ms = math.floor((sched.now() - t0) * 1000) end
    bytes = bytes + #chunk
    if is_sse then feed(chunk) elseif bytes <= 16 * 1024 * 1024 then whole[#whole + 1] = chunk end
    if not res:write(chunk) then trace.client_gone = true; break end
  end
  resp:close()
  if not is_sse then trace.usage = usage_in(json.decode(table.concat(whole))) end
  res:finish()
  trace.response_bytes = bytes
  trace.duration_ms = math.floor((sched.now() - t0) * 1000)
  self:record(trace)
end

-- Meters with a client token share one server per process and are told apart by that token
-- (the agent's Authorization header), so a batch of hundreds of runs keeps one listening socket
-- and one accept task instead of making and closing them per run. The server closes when its
-- last meter does.
local shared          -- {server=, meters = {token -> meter}, count=}

local function shared_handler(req, res)
  local token = (req.headers.authorization or ""):match("^Bearer (.+)$")
  local m = shared and token and shared.meters[token]
  if not m then return refuse(res, 401, "unknown client token") end
  local me = sched.current()
  m.active[me] = true
  local ok, err = pcall(m.handle, m, req, res)
  m.active[me] = nil
  if not ok then error(err, 0) end
end

local function join_shared(self)
  if not shared then
    local srv, err = httpd.serve({host = "127.0.0.1", port = 0}, shared_handler)
    if not srv then return nil, err end
    shared = {server = srv, meters = {}, count = 0}
  end
  if shared.meters[self.client_token] then return nil, "meter.start: client_token already in use" end
  shared.meters[self.client_token] = self
  shared.count = shared.count + 1
  self.shared, self.active = shared, {}
  return shared.server
end

-- Leaves the shared server: requests in flight get `grace` seconds, then are cancelled.
local function leave_shared(self, grace)
  local s = self.shared
  self.shared = nil
  s.meters[self.client_token] = nil
  s.count = s.count - 1
  local until_t = sched.now() + grace
  while next(self.active) and sched.now() < until_t do sched.sleep(0.01) end
  for t in pairs(self.active) do t:cancel("metering proxy closed") end
  for t in pairs(self.active) do t:wait() end
  if s.count == 0 then
    if shared == s then shared = nil end
    s.server:close()
  end
end

-- Starts a proxy. opts: upstream (base URL, e.g. "https://api.openai.com/v1"), api_key (sent
-- upstream; nil: the client's own Authorization is passed on), client_token (required from the
-- client when set), token_limit, on_limit(totals), traces_path, host/port (a server of its own
-- on that address; default: the process's shared server on 127.0.0.1 when there is a
-- client_token), timeout (per upstream request, default 600 s).
-- Returns the meter: meter.base_url (give it to the agent), meter:usage(), meter:close().
function M.start(opts)
  assert(type(opts.upstream) == "string", "meter.start: upstream base URL required")
  local self = setmetatable({upstream = opts.upstream:gsub("/+$", ""), api_key = opts.api_key,
                             client_token = opts.client_token, token_limit = opts.token_limit,
                             on_limit = opts.on_limit, traces_path = opts.traces_path,
                             timeout = opts.timeout or 600, prefix = "/v1", requests = 0,
                             totals = {input = 0, output = 0, cached = 0, reasoning = 0, counted = 0}}, Meter)
  local srv, err
  if self.client_token and not opts.host and not opts.port then
    srv, err = join_shared(self)
  else
    srv, err = httpd.serve({host = opts.host or "127.0.0.1", port = opts.port or 0},
                           function(req, res) return self:handle(req, res) end)
    self.server = srv
  end
  if not srv then return nil, err end
  self.base_url = srv.url .. self.prefix
  return self
end

-- Stops the proxy; a request still in flight gets a second to finish.
function Meter:close()
  if self.shared then leave_shared(self, 1) end
  if self.server then self.server:close{grace = 1} end
  self.server = nil
  self.closed = true
end
Meter.__close = Meter.close

M.counted = counted
M.usage_in = usage_in
M.sse_reader = sse_reader

return M
