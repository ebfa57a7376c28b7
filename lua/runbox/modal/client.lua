-- The control-plane connection to Modal (modal.client.ModalClient): request metadata, unary
-- retries with one idempotency key per logical call, server-directed throttling, the auth token.
--
--   local conn = client.new(cfg)                  -- cfg from runbox.modal.config.load()
--   local resp, err = conn:unary("AppGetOrCreate", {app_name = "x", object_creation_type = 1})
--   local call = conn:stream("ImageJoinStreaming", {...})   -- no retries: callers resume
--
-- Calls from every task share one HTTP/2 connection (runbox.grpc). Failures are
-- errors.new("modal", ...) objects: err.method, err.grpc_status ("NOT_FOUND"), err.grpc_code,
-- err.grpc_message, err.reason ("not_found", "auth", "unavailable", ...), err.attempts.
local grpc = require "runbox.grpc"
local pb = require "runbox.pb"
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local util = require "runbox.util"
local schema = require "runbox.modal.schema"
local config = require "runbox.modal.config"
local jwt = require "runbox.modal.jwt"

local M = {}

M.CLIENT_TYPE = "1"          -- CLIENT_TYPE_CLIENT, as the Python client sends
-- The Python-client behaviour this client follows (as the JS SDK sends "1.0.0"): the server
-- reads x-modal-client-version to know what a client understands. runbox names itself in
-- x-modal-runbox-version.
M.CLIENT_VERSION = "1.0.0"
M.RUNBOX_VERSION = "0.1.0"

-- Codes retried by every Modal client: CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE.
M.RETRYABLE = {[1] = true, [2] = true, [4] = true, [13] = true, [14] = true}
M.RETRIES, M.BASE_DELAY, M.MAX_DELAY, M.FACTOR = 3, 0.1, 1.0, 2
M.ATTEMPT_TIMEOUT = 120     -- seconds per attempt of a call that has no timeout of its own
M.TOKEN_LIFETIME = 20 * 60  -- assumed when an auth token has no exp claim

local REASONS = {
  NOT_FOUND = "not_found", ALREADY_EXISTS = "already_exists", INVALID_ARGUMENT = "invalid",
  OUT_OF_RANGE = "invalid", FAILED_PRECONDITION = "conflict", ABORTED = "conflict",
  UNAUTHENTICATED = "auth", PERMISSION_DENIED = "permission", RESOURCE_EXHAUSTED = "resource_exhausted",
  UNIMPLEMENTED = "unimplemented", INTERNAL = "internal", CANCELLED = "unavailable", UNKNOWN = "unavailable",
  DEADLINE_EXCEEDED = "unavailable", UNAVAILABLE = "unavailable", DATA_LOSS = "data_loss",
}

-- A Modal error for a failed call: names the method, the status and what to do.
function M.error(method, gerr, fields)
  fields = fields or {}
  local status = gerr.grpc_status or "UNKNOWN"
  local detail
  if gerr.grpc_code and not REASONS[status] and status:match("^UNKNOWN%(") then
    detail = ("the server answered with status code %s, which gRPC does not define (%s)")
             :format(tostring(gerr.grpc_code), gerr.grpc_message ~= "" and gerr.grpc_message or "no message")
  elseif gerr.transport then
    detail = ("%s: the connection to the server failed or was closed: %s"):format(status, gerr.grpc_message)
  else
    detail = ("%s: %s"):format(status, gerr.grpc_message ~= "" and gerr.grpc_message or "(no message)")
  end
  local where = fields.where or "Modal"
  local text = ("%s %s failed: %s"):format(where, method, detail)
  if fields.attempts and fields.attempts > 1 then text = text .. (" (gave up after %d attempts)"):format(fields.attempts) end
  if fields.hint then text = text .. ": " .. fields.hint end
  return errors.new("modal", text, {
    method = method, grpc_status = status, grpc_code = gerr.grpc_code, grpc_message = gerr.grpc_message,
    reason = REASONS[status] or "unknown_status", attempts = fields.attempts, metadata = gerr.metadata,
  })
end

-- The server's retry instruction in an error's grpc-status-details-bin: retry_after seconds or nil.
function M.retry_after(gerr)
  local bin = gerr.metadata and gerr.metadata["grpc-status-details-bin"]
  if not bin then return nil end
  local st = pb.decode(schema.S.RPCStatus, bin)
  if not st then return nil end
  for _, any in ipairs(st.details) do
    if any.type_url:match("/modal%.client%.RPCRetryPolicy$") then
      local pol = pb.decode(schema.S.RPCRetryPolicy, any.value)
      if pol then return pol.retry_after_secs end
    end
  end
end

local Conn = {}
Conn.__index = Conn

-- A connection for cfg (see runbox.modal.config). opts: timeout (seconds per attempt of calls
-- without their own; default M.ATTEMPT_TIMEOUT).
function M.new(cfg, opts)
  opts = opts or {}
  local url = config.server_url(cfg)
  if not url or not (url:match("^https?://") or url:match("^unix:")) then
    return nil, errors.new("modal", ("Modal server URL '%s' (%s) must start with https:// or http://")
                                    :format(tostring(cfg.server_url), cfg.sources and cfg.sources.server_url or "server_url"),
                           {reason = "config"})
  end
  local md = {
    ["x-modal-client-type"] = M.CLIENT_TYPE,
    ["x-modal-client-version"] = M.CLIENT_VERSION,
    ["x-modal-runbox-version"] = M.RUNBOX_VERSION,
    ["x-modal-token-id"] = cfg.token_id,
    ["x-modal-token-secret"] = cfg.token_secret,
  }
  for k, v in pairs(cfg.override_headers or {}) do md[k] = v end
  local self = setmetatable({cfg = cfg, url = url, metadata = md, timeout = opts.timeout or M.ATTEMPT_TIMEOUT,
                             token_lock = sched.semaphore(1)}, Conn)
  self.channel = grpc.channel(url, {metadata = md})
  self.host = url:match("^%a+://%[?([^/%]]+)%]?") or ""
  self.host = self.host:gsub(":%d+$", "")
  return self
end

-- True when the server is this machine (then a command router URL may be used without TLS,
-- as both SDKs do for local test servers).
function Conn:is_local()
  local h = self.host
  return h == "localhost" or h == "127.0.0.1" or h == "::1" or h == "172.21.0.1"
end

local function hint_for(self, method, status)
  if status == "UNAUTHENTICATED" then
    return ("the server did not accept the token %s (from %s): check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, "
            .. "or run `modal token new`"):format(tostring(self.cfg.token_id), self.cfg.sources and self.cfg.sources.token_id or "config")
  end
end

-- One logical unary call with retries. opts: retries (3), base_delay (0.1 s), max_delay (1 s),
-- factor (2), timeout (per attempt; false: none), metadata, auth_token (true: send x-modal-auth-token),
-- hint (added to the error message). Returns the response table or nil, err.
function Conn:unary(method, request, opts)
  opts = opts or {}
  local req_s, resp_s = schema.of(method)
  local path = schema.CONTROL .. method
  local retries = opts.retries or M.RETRIES
  local delay = opts.base_delay or M.BASE_DELAY
  local max_delay, factor = opts.max_delay or M.MAX_DELAY, opts.factor or M.FACTOR
  local max_throttle = self.cfg.max_throttle_wait
  local key = util.uuid()
  local t0 = util.time()
  local n, throttled, attempts = 0, 0, 0
  local md = {["x-idempotency-key"] = key, ["x-modal-timestamp"] = ("%.6f"):format(t0)}
  for k, v in pairs(opts.metadata or {}) do md[k] = v end
  while true do
    md["x-retry-attempt"] = tostring(n)
    md["x-throttle-retry-attempt"] = tostring(throttled)
    if n > 0 then md["x-retry-delay"] = ("%.3f"):format(util.time() - t0) end
    if throttled > 0 then md["x-throttle-retry-delay"] = ("%.3f"):format(util.time() - t0) end
    if opts.auth_token then
      local token, terr = self:auth_token()
      if not token then return nil, terr end
      md["x-modal-auth-token"] = token
    end
    attempts = attempts + 1
    local timeout = opts.timeout
    if timeout == nil then timeout = self.timeout elseif timeout == false then timeout = nil end
    local resp, gerr = self.channel:unary(path, request, {request = req_s, response = resp_s, metadata = md,
                                                          timeout = timeout})
    if resp then return resp end
    local wait = max_throttle ~= 0 and M.retry_after(gerr)
    if wait then
      wait = math.max(wait, 0.1)
      if max_throttle and util.time() + wait - t0 >= max_throttle then
        return nil, M.error(method, gerr, {attempts = attempts,
          hint = ("the server kept asking to slow down for longer than MODAL_MAX_THROTTLE_WAIT (%ds)"):format(max_throttle)})
      end
      throttled = throttled + 1
      sched.sleep(wait)
    elseif M.RETRYABLE[gerr.grpc_code] and n < retries then
      n = n + 1
      sched.sleep(delay)
      delay = math.min(delay * factor, max_delay)
    else
      return nil, M.error(method, gerr, {attempts = attempts, hint = opts.hint or hint_for(self, method, gerr.grpc_status)})
    end
  end
end

-- A server-streaming call (no retries: each caller resumes its own way). Returns the runbox.grpc
-- call (call:recv() -> message | nil at the end | nil, err) or nil, err (a Modal error).
function Conn:stream(method, request, opts)
  opts = opts or {}
  local req_s, resp_s = schema.of(method)
  local md = {}
  for k, v in pairs(opts.metadata or {}) do md[k] = v end
  local call, gerr = self.channel:server_stream(schema.CONTROL .. method, request,
                                                {request = req_s, response = resp_s, metadata = md, timeout = opts.timeout})
  if not call then return nil, M.error(method, gerr, {hint = hint_for(self, method, gerr.grpc_status)}), gerr end
  return call
end

-- The auth token (AuthTokenGet), fetched on first use and again once 50-60 % of its remaining
-- lifetime has passed (as the Python client does). Returns the token or nil, err.
function Conn:auth_token()
  local now = util.time()
  if self.token and now < self.token_refresh_at then return self.token end
  return self.token_lock:with(function()
    now = util.time()
    if self.token and now < self.token_refresh_at then return self.token end
    local resp, err = self:unary("AuthTokenGet", {}, {retries = self.token and 0 or 3, timeout = 5})
    if not resp then
      if self.token and now < (self.token_exp or 0) then return self.token end   -- still valid: keep it
      return nil, err
    end
    if resp.token == "" then
      return nil, errors.new("modal", "Modal AuthTokenGet returned an empty token", {reason = "auth", method = "AuthTokenGet"})
    end
    local exp = jwt.expiry(resp.token) or (now + M.TOKEN_LIFETIME)
    self.token, self.token_exp = resp.token, exp
    self.token_refresh_at = now + math.max(exp - now, 0) * (0.5 + 0.1 * math.random())
    return self.token
  end)
end

return M
