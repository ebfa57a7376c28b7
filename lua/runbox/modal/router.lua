-- The command router of one Modal task (modal.task_command_router.TaskCommandRouter): where execs
-- run. Its URL and a JWT come from TaskGetCommandRouterAccess; every call carries
-- `authorization: Bearer <jwt>`. An UNAUTHENTICATED answer fetches a fresh JWT and retries once;
-- transient codes are retried 10 times (10 ms doubling), as the Python client does.
--
--   local r = router.new(conn, task_id)
--   local resp, err = r:unary("TaskExecStart", {...})
--   local call, err, used_jwt = r:open_stream("TaskExecStdioRead", {...})
local grpc = require "runbox.grpc"
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local schema = require "runbox.modal.schema"
local client = require "runbox.modal.client"
local jwt = require "runbox.modal.jwt"

local M = {}

M.RETRIES, M.BASE_DELAY, M.FACTOR, M.MAX_DELAY = 10, 0.01, 2, 5
M.UNAUTHENTICATED = 16

local Router = {}
Router.__index = Router

-- A router for task_id, reached through conn (a runbox.modal.client connection). Nothing is
-- fetched until the first call.
function M.new(conn, task_id)
  return setmetatable({conn = conn, task_id = task_id, lock = sched.semaphore(1), generation = 0}, Router)
end

local function fail(message, fields)
  fields = fields or {}
  fields.reason = fields.reason or "router"
  return nil, errors.new("modal", message, fields)
end

-- The channel URL for a router URL: https (TLS) as given; for a server on this machine (a test
-- server) the https URL is used in plaintext, as the SDKs do, and http is accepted.
function Router:_target(url)
  local scheme, rest = (url or ""):match("^(%a+)://([^/]+)")
  if not scheme then return nil end
  if self.conn:is_local() then return "http://" .. rest end
  if scheme ~= "https" then return nil end
  return "https://" .. rest
end

-- Fetches the router's URL and a JWT (TaskGetCommandRouterAccess).
function Router:_fetch()
  local resp, err = self.conn:unary("TaskGetCommandRouterAccess", {task_id = self.task_id},
    {hint = "the sandbox's task may have ended, or command router access is not available for it"})
  if not resp then
    if err.grpc_status == "NOT_FOUND" or err.grpc_status == "FAILED_PRECONDITION" then
      err.reason = "task_ended"
    end
    return nil, err
  end
  local target = self:_target(resp.url)
  if not target then
    return fail(("Modal TaskGetCommandRouterAccess returned the router URL '%s' for task %s, which is not an https:// URL")
                :format(resp.url, self.task_id))
  end
  if self.url and self.url ~= resp.url then
    -- the JS SDK refuses this, the Python one warns; calls simply go to the new place here
    self.channel = nil
  end
  self.url, self.jwt, self.exp = resp.url, resp.jwt, jwt.expiry(resp.jwt)
  self.generation = self.generation + 1
  self.channel = self.channel or grpc.channel(target)
  return true
end

-- Makes sure the URL and a JWT are known. Returns true or nil, err.
function Router:access()
  if self.jwt then return true end
  return self.lock:with(function()
    if self.jwt then return true end
    return self:_fetch()
  end)
end

-- Replaces the JWT after a call made with `used` was refused; a no-op when another task already
-- replaced it meanwhile (many calls fail at once when a JWT expires).
function Router:refresh(used)
  return self.lock:with(function()
    if self.jwt ~= used then return true end
    return self:_fetch()
  end)
end

function Router:_metadata()
  return {authorization = "Bearer " .. self.jwt}
end

-- Wraps a router call's gRPC error.
function Router:error(method, gerr, fields)
  fields = fields or {}
  fields.where = "Modal command router"
  if gerr.grpc_status == "NOT_FOUND" and not fields.hint then
    fields.hint = ("task %s has ended (the sandbox was terminated, timed out or died)"):format(self.task_id)
  end
  local err = client.error(method, gerr, fields)
  if gerr.grpc_status == "NOT_FOUND" then err.reason = "task_ended" end
  return err
end

-- A unary call with the auth retry and transient retries. opts: retries (10), base_delay (0.01 s),
-- factor (2), max_delay (5 s), forever (retry transient codes without limit), timeout (per
-- attempt), deadline (sched.now() value after which no retry starts), hint.
function Router:unary(method, request, opts)
  opts = opts or {}
  local req_s, resp_s = schema.of(method)
  local path = schema.ROUTER .. method
  local retries = opts.retries or M.RETRIES
  local delay = opts.base_delay or M.BASE_DELAY
  local factor, max_delay = opts.factor or M.FACTOR, opts.max_delay or M.MAX_DELAY
  local n, attempts, auth_retried = 0, 0, false
  while true do
    local ok, aerr = self:access()
    if not ok then return nil, aerr end
    local used = self.jwt
    attempts = attempts + 1
    local timeout = opts.timeout
    if opts.deadline then
      local left = opts.deadline - sched.now()
      if not timeout or left < timeout then timeout = math.max(left, 0.001) end
    end
    local resp, gerr = self.channel:unary(path, request, {request = req_s, response = resp_s,
                                                          metadata = self:_metadata(), timeout = timeout})
    if resp then return resp end
    if gerr.grpc_code == M.UNAUTHENTICATED and not auth_retried then
      auth_retried = true
      local rok, rerr = self:refresh(used)
      if not rok then return nil, rerr end
    elseif client.RETRYABLE[gerr.grpc_code] and (opts.forever or n < retries)
           and not (opts.deadline and sched.now() + delay >= opts.deadline) then
      n = n + 1
      auth_retried = false   -- one auth retry per attempt, as the Python client
      sched.sleep(delay)
      delay = math.min(delay * factor, max_delay)
    else
      return nil, self:error(method, gerr, {attempts = attempts, hint = opts.hint})
    end
  end
end

-- Opens a server stream (one attempt). Returns call, nil, used_jwt; or nil, gerr (the raw gRPC
-- error, for the caller's resume logic), used_jwt; or nil, err (a Modal error) when no access.
function Router:open_stream(method, request, opts)
  opts = opts or {}
  local req_s, resp_s = schema.of(method)
  local ok, aerr = self:access()
  if not ok then return nil, aerr end
  local used = self.jwt
  local call, gerr = self.channel:server_stream(schema.ROUTER .. method, request,
    {request = req_s, response = resp_s, metadata = self:_metadata(), timeout = opts.timeout})
  return call, gerr, used
end

return M
