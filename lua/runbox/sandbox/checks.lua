-- Argument checks every sandbox backend makes the same way: paths inside a sandbox, tags,
-- environment tables, exec's argv and options. Bad types are programming errors: they raise, at
-- the level of the backend function's caller.
local M = {}

-- Absolute path without ".", "//" or a trailing "/"; nil, why for a relative path or one with "..".
function M.clean_path(p)
  if type(p) ~= "string" or p:sub(1, 1) ~= "/" then return nil, "is not an absolute path" end
  -- already clean (most paths): no "//", no "." or ".." part, no trailing "/"
  if not p:find("//", 1, true) and not p:find("/%.%.?/") and not p:find("/%.%.?$")
     and (#p == 1 or p:sub(-1) ~= "/") then
    return p
  end
  local parts = {}
  for c in p:gmatch("[^/]+") do
    if c == ".." then return nil, "contains '..'" end
    if c ~= "." then parts[#parts + 1] = c end
  end
  return "/" .. table.concat(parts, "/")
end

-- tags = {name = value}: a copy with string values.
function M.tags(tags, fname)
  if tags == nil then return {} end
  if type(tags) ~= "table" then error(fname .. ": tags must be a table of name = value strings", 3) end
  local out = {}
  for k, v in pairs(tags) do
    if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean") then
      error(fname .. ": tags must be a table of name = value strings", 3)
    end
    out[k] = tostring(v)
  end
  return out
end

-- env = {NAME = value}; with allow_false, false unsets a variable. level: as error's (3).
function M.env(env, fname, allow_false, level)
  level = level or 3
  if env == nil then return {} end
  if type(env) ~= "table" then error(fname .. ": env must be a table of NAME = value", level) end
  for k, v in pairs(env) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      error(("%s: env has a bad variable name %s"):format(fname, tostring(k)), level)
    end
    if type(v) ~= "string" and type(v) ~= "number" and not (allow_false and v == false) then
      error(("%s: env.%s must be a string%s"):format(fname, k, allow_false and " (or false to unset it)" or ""), level)
    end
  end
  return env
end

-- sb:exec's arguments: argv a non-empty list of strings, opts a table with a positive timeout.
-- Returns opts (a table) and its checked env.
function M.exec_args(argv, opts)
  if type(argv) ~= "table" or #argv == 0 then error("sb:exec: argv must be a non-empty list of strings", 3) end
  for i, a in ipairs(argv) do
    if type(a) ~= "string" then error(("sb:exec: argv[%d] must be a string, got %s"):format(i, type(a)), 3) end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("sb:exec: opts must be a table", 3) end
  local env = M.env(opts.env, "sb:exec", true, 4)
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error("sb:exec: timeout must be a positive number of seconds", 3)
  end
  return opts, env
end

-- The environment of one exec: base, then the sandbox's env, then the exec's (false unsets).
function M.merged_env(base, ...)
  local out = {}
  for k, v in pairs(base or {}) do out[k] = v end
  for i = 1, select("#", ...) do
    for k, v in pairs((select(i, ...)) or {}) do
      if v == false then out[k] = nil else out[k] = tostring(v) end
    end
  end
  return out
end

-- A sandbox id given to terminate_id: letters, digits, ".", "_", "-" (raises otherwise).
function M.sandbox_id(id, fname, example)
  if type(id) ~= "string" or not id:match("^[%w][%w._-]*$") then
    error(("%s: id must be a sandbox id such as %s"):format(fname, example), 3)
  end
  return id
end

-- Sorts a backend's list() result oldest first (then by id) and returns it.
function M.oldest_first(list)
  table.sort(list, function(a, b)
    if a.created_at ~= b.created_at then return (a.created_at or 0) < (b.created_at or 0) end
    return a.id < b.id
  end)
  return list
end

-- The execs of a sandbox that still run (execs: a set of process objects).
function M.running(execs)
  local out = {}
  for p in pairs(execs) do
    if p:running() then out[#out + 1] = p end
  end
  return out
end

return M
