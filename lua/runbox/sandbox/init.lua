-- Sandbox backends behind one interface: create, exec, put_tar, get_tar, terminate, list by tags.
--
--   local backend = assert(require("runbox.sandbox").get("local"))
--   local sb <close> = assert(backend.create{root = run_dir .. "/sandbox", timeout = 3600})
--
-- "local" (bubblewrap) is built in; "docker" and "modal" come with the same shape. A recipe may
-- plug in its own backend with register(name, module).
local errors = require "runbox.errors"

local M = {}

-- name -> module name to require, or a module table given to register()
local backends = {
  ["local"] = "runbox.sandbox.local",
  docker = "runbox.sandbox.docker",
  modal = "runbox.sandbox.modal",
}

-- The known backend names, sorted.
function M.names()
  local out = {}
  for name in pairs(backends) do out[#out + 1] = name end
  table.sort(out)
  return out
end

-- The backend module for name (default "local"), or nil, err naming the known backends.
function M.get(name)
  name = name or "local"
  if type(name) ~= "string" then error("sandbox.get: name must be a string, got " .. type(name), 2) end
  local entry = backends[name]
  if not entry then
    return nil, errors.new("sandbox", ("unknown sandbox backend '%s' (known: %s)")
                           :format(name, table.concat(M.names(), ", ")))
  end
  if type(entry) == "table" then return entry end
  local ok, mod = pcall(require, entry)
  if not ok then
    if tostring(mod):find("module '" .. entry .. "' not found", 1, true)
       or tostring(mod):find("no embedded module", 1, true) then
      return nil, errors.new("sandbox", ("the sandbox backend '%s' is not available in this runbox yet (use 'local')")
                             :format(name))
    end
    error(mod, 0)
  end
  return mod
end

-- Adds or replaces a backend: module is a table with create, list and terminate_id.
function M.register(name, module)
  if type(name) ~= "string" or name == "" then error("sandbox.register: name must be a non-empty string", 2) end
  if type(module) ~= "table" or type(module.create) ~= "function" then
    error("sandbox.register: module must be a table with a create function", 2)
  end
  backends[name] = module
end

return M
