-- What one run on the modal backend needs besides the task: the model key as a Modal secret
-- (the named secret `openai-api-keys` if it exists, else an ephemeral one from OPENAI_API_KEY),
-- the codex installation volume for the codex agent, the artifacts volume, and the image and
-- resources (the config's `modal:` section, then the task's tb_meta `sandbox` object).
--
-- Lookups are made once per process and shared by every run of a batch.
local errors = require "runbox.errors"
local json = require "runbox.json"
local log = require "runbox.log"

local M = {}

M.SECRET = "openai-api-keys"
M.CODEX_VOLUME = "codex-installation"
M.CODEX_MOUNT = "/codex"
M.MANIFEST = "runbox-codex.json"
M.ARTIFACTS_VOLUME = "codex-artifacts"

local shared = {}   -- client, secret ("named" | "env" | false), codex manifest

local function usage(message) return nil, errors.new("sandbox", message) end

-- The process's Modal client (made on first use).
function M.client()
  if shared.client then return shared.client end
  -- the backend's client: one connection per process for runs, list and terminate alike
  local c, err = require("runbox.sandbox.modal").client()
  if not c then return nil, err end
  shared.client = c
  return c
end

-- Forgets what was looked up (tests; after `runbox setup` in the same process).
function M.reset() shared = {} end

-- How the agent gets its key: {secrets = {name}} or {secret_env = {OPENAI_API_KEY = key}}.
local function key_options(c, required)
  if shared.secret == nil then
    local s, err = c:secret_from_name(M.SECRET)
    if s then shared.secret = "named"
    elseif err and err.reason == "not_found" then shared.secret = false
    else return nil, err end
  end
  if shared.secret == "named" then return {secrets = {M.SECRET}} end
  local key = os.getenv("OPENAI_API_KEY")
  if key and key ~= "" then
    log.redact(key)
    return {secret_env = {OPENAI_API_KEY = key}}
  end
  if not required then return {} end
  return usage(("the agent needs an OpenAI key in the Modal sandbox, and there is no Modal secret '%s' "
                .. "and no OPENAI_API_KEY here: run `runbox setup` (it creates the secret from "
                .. "OPENAI_API_KEY or ./.env), or set OPENAI_API_KEY"):format(M.SECRET))
end

-- The codex installation on its volume: {volumes = {[/codex] = name}, codex_bin = path inside}.
local function codex_options(c)
  if not shared.codex then
    local vol, err = c:volume(M.CODEX_VOLUME, {create = false})
    if not vol then
      if err and err.reason == "not_found" then
        return usage(("the codex agent needs volume '%s' with the codex installation, and it does not "
                      .. "exist: run `runbox setup` (it uploads your local codex)"):format(M.CODEX_VOLUME))
      end
      return nil, err
    end
    local text = vol:read(M.MANIFEST)
    local manifest = text and json.decode(text)
    if type(manifest) ~= "table" or type(manifest.bin) ~= "string" then
      return usage(("volume '%s' has no %s (not made by `runbox setup`, or an interrupted upload): run "
                    .. "`runbox setup` again"):format(M.CODEX_VOLUME, M.MANIFEST))
    end
    shared.codex = manifest
  end
  return {volumes = {[M.CODEX_MOUNT] = M.CODEX_VOLUME},
          codex_bin = M.CODEX_MOUNT .. "/" .. shared.codex.bin:gsub("^/+", "")}
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    if type(v) == "table" and type(into[k]) == "table" and k ~= "image" then merge(into[k], v)
    else into[k] = v end
  end
  return into
end

-- Image and resources: the config's modal section, then the task's tb_meta `sandbox` object.
local function placement(config, t)
  local o = {}
  for _, src in ipairs{config or {}, t and type(t.meta.sandbox) == "table" and t.meta.sandbox or {}} do
    if src.image ~= nil then o.image = src.image end
    if src.cpu ~= nil then o.cpu = src.cpu end
    if src.memory ~= nil then o.memory = src.memory end
    if src.memory_mb ~= nil then o.memory = src.memory_mb end
    if src.app ~= nil then o.app = src.app end
  end
  return o
end

-- Options for backend.create and the agent context of one run. ctx: agent (the agent table),
-- run_id, task, config (the config's modal section). Returns {create = {...}, codex_bin =} or
-- nil, err (err.code "sandbox": what is missing and what to run).
function M.options(ctx)
  local c, err = M.client()
  if not c then return nil, err end
  local create = placement(ctx.config, ctx.task)
  create.client = c
  create.artifacts = {volume = M.ARTIFACTS_VOLUME, run_id = ctx.run_id}
  local out = {create = create}
  if ctx.agent.uses_model then
    -- codex cannot work without a key; a command agent may not need one (it then gets none)
    local k
    k, err = key_options(c, ctx.agent.name == "codex")
    if not k then return nil, err end
    merge(create, k)
  end
  if ctx.agent.name == "codex" and not ctx.codex_bin then
    local k
    k, err = codex_options(c)
    if not k then return nil, err end
    create.volumes = merge(create.volumes or {}, k.volumes)
    out.codex_bin = k.codex_bin
  end
  return out
end

return M
