-- runbox's Modal client: Modal's gRPC API spoken directly, every call a non-blocking task on the
-- runbox scheduler, so one process can drive hundreds of sandboxes. See docs/api/modal.md.
--
--   local modal = require "runbox.modal"
--   local c = assert(modal.client())
--   local image = assert(c:image{registry = "python:3.11-slim", commands = {"RUN pip install pytest"}})
--   local sb = assert(c:sandbox_create{image = image, cpu = 2, memory = 4096, tags = {batch = "b1"}})
--   local r = assert(sb:run({"python3", "-c", "print(6 * 7)"}))
--   sb:terminate()
local errors = require "runbox.errors"
local config = require "runbox.modal.config"
local client = require "runbox.modal.client"
local image = require "runbox.modal.image"
local secret = require "runbox.modal.secret"
local volume = require "runbox.modal.volume"
local sandbox = require "runbox.modal.sandbox"

local M = {}

M.DEFAULT_APP = "runbox"

local Client = {}
Client.__index = Client

-- A client from the Modal configuration (runbox.modal.config: environment variables and
-- ~/.modal.toml, as the Python client). opts: app (the default app's name, "runbox"), timeout
-- (seconds per attempt of ordinary calls), and config.load's options (env, home, token_id,
-- token_secret, server_url, environment, ...). Returns the client or nil, err.
function M.client(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("modal.client: opts must be a table", 2) end
  local load_opts = {}
  for k, v in pairs(opts) do
    if k ~= "app" and k ~= "timeout" then load_opts[k] = v end
  end
  local cfg, err = config.load(load_opts)
  if not cfg then return nil, err end
  local conn
  conn, err = client.new(cfg, {timeout = opts.timeout})
  if not conn then return nil, err end
  return setmetatable({config = cfg, conn = conn, environment = cfg.environment or "",
                       app_name = opts.app or M.DEFAULT_APP, apps = {}}, Client)
end

-- Checks the credentials with the server (ClientHello). Returns true or nil, err.
function Client:hello()
  local resp, err = self.conn:unary("ClientHello", {}, {retries = 1})
  if not resp then return nil, err end
  return true, resp
end

-- The auth token (AuthTokenGet), refreshed before it expires.
function Client:auth_token() return self.conn:auth_token() end

-- The app `name` (default: the client's app), created if missing unless opts.create == false.
-- Returns {id =, name =} or nil, err. Cached per name.
function Client:app(name, opts)
  name = name or self.app_name
  opts = opts or {}
  if self.apps[name] then return self.apps[name] end
  local resp, err = self.conn:unary("AppGetOrCreate", {app_name = name, environment_name = self.environment,
                                                       object_creation_type = opts.create == false and 0 or 1})
  if not resp then return nil, err end
  local app = {id = resp.app_id, name = name}
  self.apps[name] = app
  return app
end

-- The app of an operation: an app object, an app name, or the client's default app.
function Client:_app_id(app)
  if type(app) == "table" then return app.id end
  local a, err = self:app(app)
  if not a then return nil, err end
  return a.id
end

-- Builds an image (see runbox.modal.image.build): spec.registry, spec.commands, spec.layers,
-- spec.on_log, spec.app ... Returns {id =, layers =} or nil, err.
function Client:image(spec)
  if type(spec) ~= "table" then error("modal image: spec must be a table", 2) end
  local app_id, err = self:_app_id(spec.app)
  if not app_id then return nil, err end
  return image.build(self.conn, app_id, spec, {builder_version = self.config.image_builder_version,
                                               force_build = self.config.force_build,
                                               ignore_cache = self.config.ignore_cache})
end

-- Looks up a named secret: {id =, name =} or nil, err (missing: err.reason "not_found").
function Client:secret_from_name(name, opts)
  return secret.from_name(self.conn, self.environment, name, opts)
end

-- An ephemeral secret from a table of variables: {id =} or nil, err.
function Client:secret_from_map(map, opts)
  return secret.from_map(self.conn, self.environment, map, opts)
end

-- Creates the named secret (opts.overwrite replaces an existing one): {id =, name =} or nil, err.
function Client:secret_create(name, map, opts)
  return secret.create(self.conn, self.environment, name, map, opts)
end

-- The volume `name` (opts.create: make it if missing): a volume object or nil, err.
function Client:volume(name, opts)
  return volume.get(self.conn, self.environment, name, opts)
end

-- Creates a sandbox. spec: image (object or id, required), app (object or name), cpu (cores),
-- memory (MiB), timeout (seconds, default 300), workdir, secrets (list of secrets or ids), env
-- (variables, sent as an ephemeral secret), volumes ({["/mnt"] = vol | {volume = vol, read_only
-- = true}}), tags, network (true, false or {cidrs =, domains =}), command (entrypoint argv),
-- regions, name, idle_timeout, start_timeout. Returns the sandbox or nil, err.
function Client:sandbox_create(spec)
  if type(spec) ~= "table" then error("modal sandbox_create: spec must be a table", 2) end
  if spec.image == nil then error("modal sandbox_create: image is required", 2) end
  local app_id, err = self:_app_id(spec.app)
  if not app_id then return nil, err end
  return sandbox.create(self, app_id, spec)
end

-- A sandbox object for an id (checked with SandboxWait(0)): the sandbox or nil, err.
function Client:sandbox_from_id(id)
  local sb = sandbox.handle(self, id)
  local _, err = sb:poll()
  if err then return nil, err end
  return sb
end

-- Terminates the sandbox `id`. Returns true or nil, err.
function Client:sandbox_terminate(id)
  return sandbox.handle(self, id):terminate()
end

-- Running sandboxes of the app (opts.app: object or name; default the client's app; false: every
-- app) that carry every tag of opts.tags. opts.include_finished lists ended ones too.
function Client:sandbox_list(opts)
  opts = opts or {}
  local app_id
  if opts.app ~= false then
    local err
    app_id, err = self:_app_id(opts.app)
    if not app_id then return nil, err end
  end
  return sandbox.list(self.conn, self.environment, app_id, opts)
end

M.Client = Client
M.errors = errors
return M
