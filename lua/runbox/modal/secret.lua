-- Modal secrets (SecretGetOrCreate): named ones looked up or created, and ephemeral ones made from
-- a table of variables. A secret is {id = "st-...", name = ...}; sandboxes and execs take them.
local errors = require "runbox.errors"

local M = {}

-- What to tell the user when a named secret is missing.
M.HINTS = {["openai-api-keys"] = "run `runbox setup` to create it from OPENAI_API_KEY"}

local function check_map(map, fname)
  if type(map) ~= "table" then error(fname .. ": variables must be a table of NAME = value", 3) end
  local out = {}
  for k, v in pairs(map) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      error(("%s: bad variable name %s"):format(fname, tostring(k)), 3)
    end
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then error(("%s: the value of %s must be a string"):format(fname, k), 3) end
    out[k] = v
  end
  return out
end

local function env_text(environment)
  return environment ~= "" and ("environment '%s'"):format(environment) or "the default environment"
end

-- Looks up the secret `name`. opts: required_keys (a list; a secret without one of them is an
-- error). Returns {id =, name =} or nil, err (err.reason "not_found" when it does not exist).
function M.from_name(conn, environment, name, opts)
  if type(name) ~= "string" or name == "" then error("modal secret_from_name: name must be a non-empty string", 3) end
  opts = opts or {}
  local resp, err = conn:unary("SecretGetOrCreate", {
    deployment_name = name, environment_name = environment, object_creation_type = 0,
    required_keys = opts.required_keys or {},
  })
  if resp then return {id = resp.secret_id, name = name} end
  local hint = M.HINTS[name] or ("create it with `modal secret create %s NAME=VALUE ...`"):format(name)
  if err.grpc_status == "NOT_FOUND" then
    return nil, errors.new("modal", ("Modal secret '%s' was not found in %s: %s"):format(name, env_text(environment), hint),
                           {reason = "not_found", method = err.method, grpc_status = err.grpc_status, secret = name})
  end
  if err.grpc_status == "FAILED_PRECONDITION" and (err.grpc_message or ""):find("missing key") then
    return nil, errors.new("modal", ("Modal secret '%s' (in %s) lacks a required key (%s; required: %s): %s")
                           :format(name, env_text(environment), err.grpc_message, table.concat(opts.required_keys or {}, ", "),
                                   M.HINTS[name] or "add the key to the secret"),
                           {reason = "missing_key", method = err.method, grpc_status = err.grpc_status, secret = name})
  end
  return nil, err
end

-- An ephemeral secret holding the variables of map (values never appear in messages). opts:
-- app_id (then it is owned by that app, as the Python client does). Returns {id =} or nil, err.
function M.from_map(conn, environment, map, opts)
  opts = opts or {}
  local env = check_map(map, "modal secret_from_map")
  local resp, err = conn:unary("SecretGetOrCreate", {
    environment_name = environment, env_dict = env, app_id = opts.app_id,
    object_creation_type = opts.app_id and 4 or 5,
  })
  if not resp then return nil, err end
  return {id = resp.secret_id}
end

-- Creates (or, with opts.overwrite, replaces) the named secret from map. Returns {id =, name =}
-- or nil, err (err.reason "already_exists" when it exists and overwrite is not set).
function M.create(conn, environment, name, map, opts)
  if type(name) ~= "string" or name == "" then error("modal secret_create: name must be a non-empty string", 3) end
  opts = opts or {}
  local env = check_map(map, "modal secret_create")
  local resp, err = conn:unary("SecretGetOrCreate", {
    deployment_name = name, environment_name = environment, env_dict = env,
    object_creation_type = opts.overwrite and 3 or 2,
  })
  if not resp then return nil, err end
  return {id = resp.secret_id, name = name}
end

return M
