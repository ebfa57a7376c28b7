-- Starts the stand-in Modal server (server.py next to this file) for tests and benchmarks.
--
--   local standin = dofile(root .. "/tests/helpers/modal_standin/start.lua")
--   local s <close> = standin.start{}      -- options below; raises when it cannot start
--   s.grpc_url, s.http_url, s.state_dir, s.token_id, s.token_secret, s.pid
--   s.env()                                -- {MODAL_SERVER_URL=, MODAL_TOKEN_ID=, MODAL_TOKEN_SECRET=}
--   s.admin{method = "SandboxCreate", kind = "unavailable", count = 2}   -- POST /admin/faults
--   s.admin(nil)                           -- DELETE /admin/faults (all faults cleared)
--   s.secret("openai-api-keys", {OPENAI_API_KEY = "sk-x"})              -- POST /admin/secrets
--   s.state()                              -- GET /admin/state, decoded
--   s.log()                                -- what the server wrote on stderr
--   s.stop()                               -- SIGTERM; waits until every sandbox is gone
--
-- Options: state_dir (default: a new temp folder, removed by stop), token_id ("ak-test"),
-- token_secret ("as-test"), build_run ("exec" or "skip"), jwt_ttl (seconds), python
-- ("/usr/bin/python3"), start_timeout (30 s).
local proc = require "runbox.proc"
local http = require "runbox.http"
local json = require "runbox.json"
local fs = require "runbox.fs"
local sched = require "runbox.sched"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
M.server = here .. "/server.py"

local MAX_LOG = 256 * 1024

local function request(s, method, path, body)
  local resp, err = http.request{
    url = s.http_url .. path, method = method, timeout = 30,
    body = body and json.encode(body) or nil,
    headers = body and {["content-type"] = "application/json"} or nil,
  }
  if not resp then error(("stand-in %s %s: %s"):format(method, path, err.message), 3) end
  local value = json.decode(resp.body)
  if resp.status ~= 200 then
    local why = type(value) == "table" and value.error or resp.body
    error(("stand-in %s %s: HTTP %d: %s"):format(method, path, resp.status, tostring(why)), 3)
  end
  return value
end

-- Drains the server's stderr into s._log (the last MAX_LOG bytes) so that it never blocks.
local function drain(s)
  s._log = ""
  s._drain = sched.spawn(function()
    while true do
      local chunk = s.proc:read("stderr")
      if not chunk then return end
      s._log = s._log .. chunk
      if #s._log > MAX_LOG then s._log = s._log:sub(-MAX_LOG) end
    end
  end)
end

function M.start(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("standin.start: opts must be a table", 2) end
  local s = {token_id = opts.token_id or "ak-test", token_secret = opts.token_secret or "as-test"}
  local own_dir = false
  s.state_dir = opts.state_dir
  if not s.state_dir then
    s.state_dir = assert(fs.temp_dir("modal-standin"))
    own_dir = true
  end
  local argv = {opts.python or "/usr/bin/python3", M.server, "--state", s.state_dir,
                "--token-id", s.token_id, "--token-secret", s.token_secret, "--die-with-parent",
                stdout = "pipe", stderr = "pipe"}
  if opts.build_run then argv[#argv + 1] = "--build-run"; argv[#argv + 1] = opts.build_run end
  if opts.jwt_ttl then argv[#argv + 1] = "--jwt-ttl"; argv[#argv + 1] = tostring(opts.jwt_ttl) end
  local p, err = proc.spawn(argv)
  if not p then error("standin.start: " .. err.message, 2) end
  s.proc, s.pid = p, p.pid
  drain(s)

  local stopped = false
  function s.stop()
    if stopped then return end
    stopped = true
    if p:running() then
      p:kill(15)
      local code = p:wait(20)
      if code == nil then p:kill(9); p:wait() end
    end
    p:close()
    if own_dir then fs.remove_tree(s.state_dir) end
  end

  local ok, line = sched.timeout(opts.start_timeout or 30, function() return p:lines()() end)
  local info = ok and line and json.decode(line)
  if type(info) ~= "table" or not info.grpc_url then
    s.stop()
    error(("standin.start: the server did not start (%s)\n%s"):format(
      ok and ("it printed " .. tostring(line)) or tostring(line), s._log), 2)
  end
  s.grpc_url, s.http_url = info.grpc_url, info.http_url

  function s.env()
    return {MODAL_SERVER_URL = s.grpc_url, MODAL_TOKEN_ID = s.token_id,
            MODAL_TOKEN_SECRET = s.token_secret}
  end
  function s.admin(fault)
    if fault == nil then return request(s, "DELETE", "/admin/faults") end
    return request(s, "POST", "/admin/faults", fault)
  end
  function s.secret(name, env, environment)
    return request(s, "POST", "/admin/secrets", {name = name, env = env, environment = environment})
  end
  function s.state() return request(s, "GET", "/admin/state") end
  function s.log() return s._log end
  return setmetatable(s, {__close = function() s.stop() end})
end

return M
