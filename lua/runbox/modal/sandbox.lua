-- Modal sandboxes: create (SandboxCreate), the task id (SandboxGetTaskId, polled), execs through
-- the task's command router, wait (SandboxWait long-polls), terminate, list by tags (SandboxList).
local sched = require "runbox.sched"
local errors = require "runbox.errors"
local schema = require "runbox.modal.schema"
local router_mod = require "runbox.modal.router"
local exec = require "runbox.modal.exec"

local M = {}

M.DEFAULT_TIMEOUT = 300        -- seconds, as both SDKs
M.TASK_POLL = 0.5              -- seconds between SandboxGetTaskId calls
M.START_TIMEOUT = 600          -- seconds a sandbox may take to get a task
M.WAIT_POLL = 10               -- seconds the server may hold SandboxWait

local Sandbox = {}
Sandbox.__index = Sandbox

local function fail(message, fields)
  fields = fields or {}
  fields.reason = fields.reason or "sandbox"
  return nil, errors.new("modal", message, fields)
end

-- A GenericResult as {status = "success"|"failure"|"terminated"|"timeout"|..., code =, exception =}:
-- code 124 for a timeout, 137 when terminated, else the entrypoint's exit code (as the SDKs), but
-- never 0 for an end other than success (a sandbox whose worker died has no exit code).
function M.result_of(r)
  if not r then return nil end
  local n = schema.enum_number("GenericStatus", r.status)
  if n == 0 then return nil end
  local code = n == 4 and 124 or n == 3 and 137 or r.exitcode
  if code == 0 and n ~= 1 then code = 1 end
  return {status = schema.status_word(n), code = code, exception = r.exception ~= "" and r.exception or nil}
end

---------------------------------------------------------------------------------------------------
-- create

local function id_of(x, what)
  if type(x) == "string" then return x end
  if type(x) == "table" and type(x.id) == "string" then return x.id end
  error(("modal sandbox_create: %s must be an object with an id or an id string"):format(what), 4)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function network_of(net)
  if net == nil or net == true then return {network_access_type = 1} end
  if net == false then return {network_access_type = 2} end
  if type(net) == "table" then
    return {network_access_type = 3, allowed_cidrs = net.cidrs or {}, allowed_domains = net.domains or {}}
  end
  error("modal sandbox_create: network must be true, false or {cidrs = {...}, domains = {...}}", 4)
end

-- The SandboxCreate definition for spec (see Client:sandbox_create). secret_ids: the ids to add.
function M.definition(spec, secret_ids)
  local timeout = spec.timeout or M.DEFAULT_TIMEOUT
  if type(timeout) ~= "number" or timeout <= 0 then error("modal sandbox_create: timeout must be a positive number of seconds", 3) end
  if spec.workdir ~= nil and (type(spec.workdir) ~= "string" or spec.workdir:sub(1, 1) ~= "/") then
    error("modal sandbox_create: workdir must be an absolute path", 3)
  end
  local resources = {}
  if spec.cpu ~= nil then
    if type(spec.cpu) ~= "number" or spec.cpu <= 0 then error("modal sandbox_create: cpu must be a positive number of cores", 3) end
    resources.milli_cpu = math.floor(spec.cpu * 1000)
  end
  if spec.memory ~= nil then
    if math.type(spec.memory) ~= "integer" or spec.memory <= 0 then error("modal sandbox_create: memory must be a whole number of MiB", 3) end
    resources.memory_mb = spec.memory
  end
  local mounts = {}
  for _, path in ipairs(sorted_keys(spec.volumes or {})) do
    local v = spec.volumes[path]
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" then error("modal sandbox_create: volumes keys must be absolute paths", 3) end
    local vol, ro = v, false
    if type(v) == "table" and v.volume then vol, ro = v.volume, v.read_only and true or false end
    mounts[#mounts + 1] = {volume_id = id_of(vol, "volumes[\"" .. path .. "\"]"), mount_path = path,
                           allow_background_commits = true, read_only = ro}
  end
  local argv = spec.command or {}
  for i, a in ipairs(argv) do
    if type(a) ~= "string" then error(("modal sandbox_create: command[%d] must be a string"):format(i), 3) end
  end
  return {
    entrypoint_args = argv, image_id = id_of(spec.image, "image"), secret_ids = secret_ids,
    resources = resources, timeout_secs = math.ceil(timeout), workdir = spec.workdir, volume_mounts = mounts,
    open_ports = {ports = {}}, network_access = network_of(spec.network),
    scheduler_placement = spec.regions and {regions = spec.regions} or nil,
    name = spec.name, idle_timeout_secs = spec.idle_timeout and math.ceil(spec.idle_timeout) or nil,
  }
end

local function tags_of(tags)
  local out = {}
  if tags == nil then return out end
  if type(tags) ~= "table" then error("modal: tags must be a table of name = value strings", 4) end
  for _, k in ipairs(sorted_keys(tags)) do
    local v = tags[k]
    if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean") then
      error("modal: tags must be a table of name = value strings", 4)
    end
    out[#out + 1] = {tag_name = k, tag_value = tostring(v)}
  end
  return out
end
M.tags_of = tags_of

-- Creates a sandbox. c: the client (runbox.modal); app_id; spec as Client:sandbox_create.
function M.create(c, app_id, spec)
  local ids = {}
  for i, s in ipairs(spec.secrets or {}) do ids[#ids + 1] = id_of(s, "secrets[" .. i .. "]") end
  local def = M.definition(spec, ids)
  local tags = tags_of(spec.tags)
  if spec.env and next(spec.env) then
    local sec, err = c:secret_from_map(spec.env, {app_id = app_id})
    if not sec then return nil, err end
    ids[#ids + 1] = sec.id
  end
  local resp, err = c.conn:unary("SandboxCreate", {app_id = app_id, definition = def, tags = tags})
  if not resp then return nil, err end
  local t = {}
  for _, tag in ipairs(tags) do t[tag.tag_name] = tag.tag_value end
  return M.handle(c, resp.sandbox_id, {app_id = app_id, tags = t, timeout = def.timeout_secs,
                                       start_timeout = spec.start_timeout})
end

-- A sandbox object for an existing id.
function M.handle(c, id, fields)
  fields = fields or {}
  return setmetatable({client = c, conn = c.conn, id = id, app_id = fields.app_id, tags = fields.tags or {},
                       timeout = fields.timeout, start_timeout = fields.start_timeout, lock = sched.semaphore(1)},
                      Sandbox)
end

---------------------------------------------------------------------------------------------------
-- task and execs

-- The sandbox's task id, polled until the sandbox has been scheduled. Returns it or nil, err
-- (err.reason "sandbox_ended" when the sandbox ended first).
function Sandbox:task_id()
  if self._task_id then return self._task_id end
  return self.lock:with(function()
    if self._task_id then return self._task_id end
    local give_up = sched.now() + (self.start_timeout or M.START_TIMEOUT)
    while true do
      local resp, err = self.conn:unary("SandboxGetTaskId", {sandbox_id = self.id})
      if not resp then return nil, err end
      if resp.task_id and resp.task_id ~= "" then
        self._task_id = resp.task_id
        return resp.task_id
      end
      local r = M.result_of(resp.task_result)
      if r then
        self.result = r
        return fail(("Modal sandbox %s ended (%s%s) before it started a task"):format(self.id, r.status,
                    r.exception and (": " .. r.exception) or ""), {reason = "sandbox_ended", result = r})
      end
      if sched.now() >= give_up then
        return fail(("Modal sandbox %s has not started after %gs"):format(self.id, self.start_timeout or M.START_TIMEOUT),
                    {reason = "start_timeout"})
      end
      sched.sleep(M.TASK_POLL)
    end
  end)
end

-- The command router of the sandbox's task (made once).
function Sandbox:router()
  if self._router then return self._router end
  local task_id, err = self:task_id()
  if not task_id then return nil, err end
  self._router = self._router or router_mod.new(self.conn, task_id)
  return self._router
end

local function secret_ids_of(list)
  local ids = {}
  for i, s in ipairs(list or {}) do ids[#ids + 1] = id_of(s, "secrets[" .. i .. "]") end
  return ids
end

-- Starts argv in the sandbox; returns a process (runbox.modal.exec) or nil, err. opts as
-- exec.start, plus secrets (secret objects or ids).
function Sandbox:exec(argv, opts)
  opts = opts or {}
  local r, err = self:router()
  if not r then return nil, err end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.secret_ids, o.secrets = secret_ids_of(opts.secrets), nil
  local p
  p, err = exec.start(r, argv, o)
  if not p and err.reason == "task_ended" then
    local res = self:poll()
    if res then
      err.message = err.message .. (" (sandbox %s: %s%s)"):format(self.id, res.status, res.exception and (", " .. res.exception) or "")
      err.result = res
    end
  end
  return p, err
end

-- Runs argv to the end: {code =, how =, stdout =, stderr =} or nil, err.
function Sandbox:run(argv, opts)
  local p, err = self:exec(argv, opts)
  if not p then return nil, err end
  return exec.collect(p)
end

---------------------------------------------------------------------------------------------------
-- wait, poll, terminate

-- The sandbox's result if it has ended ({status =, code =, exception =}), else nil; nil, err.
function Sandbox:poll()
  if self.result then return self.result end
  local resp, err = self.conn:unary("SandboxWait", {sandbox_id = self.id, timeout = 0})
  if not resp then return nil, err end
  self.result = M.result_of(resp.result)
  return self.result
end

-- Waits until the sandbox ends. opts.timeout: seconds, then nil, err (code "timeout").
-- Returns {status =, code =, exception =} or nil, err.
function Sandbox:wait(opts)
  opts = opts or {}
  local give_up = opts.timeout and sched.now() + opts.timeout
  while not self.result do
    local hold = M.WAIT_POLL
    if give_up then
      local left = give_up - sched.now()
      if left <= 0 then
        return nil, errors.new("timeout", ("Modal sandbox %s is still running after %gs"):format(self.id, opts.timeout))
      end
      hold = math.min(hold, left)
    end
    local resp, err = self.conn:unary("SandboxWait", {sandbox_id = self.id, timeout = hold}, {timeout = hold + 30})
    if not resp then return nil, err end
    self.result = M.result_of(resp.result)
  end
  return self.result
end

-- Terminates the sandbox (a no-op if it already ended). opts.wait: also wait for its end.
-- Returns true (or the result with wait) or nil, err.
function Sandbox:terminate(opts)
  opts = opts or {}
  local resp, err = self.conn:unary("SandboxTerminate", {sandbox_id = self.id})
  if not resp then return nil, err end
  self.terminated = true
  if opts.wait then return self:wait{timeout = opts.timeout} end
  return true
end

-- Makes volumes mounted in the running sandbox show their latest committed state.
function Sandbox:reload_volumes()
  local r, err = self:router()
  if not r then return nil, err end
  local resp
  resp, err = r:unary("TaskReloadVolumes", {task_id = r.task_id})
  if not resp then return nil, err end
  return true
end

---------------------------------------------------------------------------------------------------
-- list

-- Sandboxes of app_id (all apps when nil) that carry every tag in opts.tags: {id =, app_id =,
-- tags = {}, created_at =, task_id =, result = (nil while running)}, newest first, following the
-- server's pages.
function M.list(conn, environment, app_id, opts)
  opts = opts or {}
  local tags = tags_of(opts.tags)
  local out, before = {}, 0
  while true do
    local resp, err = conn:unary("SandboxList", {app_id = app_id or "", before_timestamp = before, tags = tags,
                                                 environment_name = environment, include_finished = opts.include_finished or false})
    if not resp then return nil, err end
    if #resp.sandboxes == 0 then return out end
    for _, s in ipairs(resp.sandboxes) do
      local t = {}
      for _, tag in ipairs(s.tags) do t[tag.tag_name] = tag.tag_value end
      out[#out + 1] = {id = s.id, app_id = s.app_id, tags = t, created_at = s.created_at,
                       task_id = s.task_info and s.task_info.id ~= "" and s.task_info.id or nil,
                       result = M.result_of(s.task_info and s.task_info.result)}
    end
    local last = resp.sandboxes[#resp.sandboxes].created_at
    if last == 0 or (before ~= 0 and last >= before) then return out end   -- a server that does not page
    before = last
  end
end

M.Sandbox = Sandbox
return M
