-- Modal credentials and settings, found as the Python client (modal 1.x, modal/config.py) finds
-- them: the variable MODAL_<KEY>, else the key in the active profile of the TOML file
-- (MODAL_CONFIG_PATH, else ~/.modal.toml), else the built-in default. The profile is MODAL_PROFILE,
-- else the one with `active = true`, else "default".
--
--   local cfg, err = config.load()          -- or config.load{env = {...}, home = "/tmp/h"}
--   cfg.token_id, cfg.token_secret, cfg.server_url, cfg.environment, cfg.profile, ...
local errors = require "runbox.errors"
local fs = require "runbox.fs"
local util = require "runbox.util"
local toml = require "runbox.modal.toml"

local M = {}

M.DEFAULT_SERVER_URL = "https://api.modal.com,https://api.modal2.com"

local function fail(reason, message)
  return nil, errors.new("modal", message, {reason = reason})
end

local function truthy(x) return not ({[""] = true, ["0"] = true, ["false"] = true})[tostring(x):lower()] end

-- "h1:v1,h2:v2" -> {h1 = "v1", h2 = "v2"} (MODAL_OVERRIDE_HEADERS).
local function headers_of(s)
  local out = {}
  if s == "" then return out end
  for pair in (s .. ","):gmatch("([^,]*),") do
    local k, v = pair:match("^%s*([^:]-)%s*:%s*(.-)%s*$")
    if not k or k == "" or v == "" then
      error("must be a comma-separated list of <header>:<value> pairs", 0)
    end
    out[k:lower()] = v
  end
  return out
end

local function integer_of(s)
  if s == "" then return nil end
  local n = math.tointeger(tonumber(s))
  if not n then error("must be a whole number of seconds", 0) end
  return n
end

-- The settings runbox reads, with their defaults and how a text value is read.
local SETTINGS = {
  token_id = {},
  token_secret = {},
  server_url = {default = M.DEFAULT_SERVER_URL},
  environment = {default = ""},
  image_builder_version = {},
  max_throttle_wait = {transform = integer_of},
  force_build = {default = false, transform = truthy},
  ignore_cache = {default = false, transform = truthy},
  override_headers = {default = {}, transform = headers_of},
}
M.SETTINGS = SETTINGS

-- Parses a config file's text: the profiles table or nil, err (naming the file and line).
function M.parse(text, path)
  local data, perr = toml.parse(text, path)
  if not data then
    return fail("config", ("cannot read the Modal configuration %s: fix or remove the file"):format(perr))
  end
  for _, name in ipairs(toml.order(data)) do
    if type(data[name]) ~= "table" then
      return fail("config", ("cannot read the Modal configuration %s: '%s' is not a [profile] table "
                             .. "(the file must hold one table per profile, e.g. [default] with token_id and token_secret)")
                             :format(path, name))
    end
  end
  return data
end

local function read_file(path)
  local st = fs.stat(path)
  if not st then return {} end
  local text, err = fs.read(path)
  if not text then
    return fail("config", ("cannot read the Modal configuration %s: %s"):format(path, errors.message(err)))
  end
  return M.parse(text, path)
end

-- The active profile's name and whether it was named by MODAL_PROFILE; or nil, err when the file
-- marks several profiles active, or has several, none active, and the name falls back to "default".
local function pick_profile(data, env, path)
  local names = toml.order(data)
  local active = {}
  for _, name in ipairs(names) do
    if data[name].active == true then active[#active + 1] = name end
  end
  local from_env = env.MODAL_PROFILE ~= nil and env.MODAL_PROFILE ~= ""
  local profile = from_env and env.MODAL_PROFILE or active[1] or "default"
  if #active > 1 then
    return fail("config", ("more than one Modal profile is active in %s (%s): keep `active = true` in one of them "
                           .. "(or run `modal profile activate NAME`)"):format(path, table.concat(active, ", ")))
  end
  if #names > 1 and #active == 0 and profile == "default" then
    return fail("config", ("no Modal profile is active in %s (profiles: %s): set MODAL_PROFILE, put `active = true` "
                           .. "in one of them, or run `modal profile activate NAME`"):format(path, table.concat(names, ", ")))
  end
  return profile, from_env
end

-- Loads the configuration. opts (all optional, for tests and embedders): env (a table used
-- instead of the process environment), home (instead of $HOME), and any setting name to force a
-- value (token_id = ..., server_url = ...). Returns cfg or nil, err (err.code "modal", err.reason
-- "config" for a bad file or value, "profile" for an unknown profile, "credentials" when the
-- token is missing).
function M.load(opts)
  opts = opts or {}
  local env = opts.env or util.env()
  local home = opts.home or env.HOME or ""
  local path = (env.MODAL_CONFIG_PATH ~= nil and env.MODAL_CONFIG_PATH ~= "") and env.MODAL_CONFIG_PATH
               or home .. "/.modal.toml"
  local data, err = read_file(path)
  if not data then return nil, err end
  local profile, named = pick_profile(data, env, path)
  if not profile then return nil, named end
  local section = data[profile] or {}

  local cfg = {profile = profile, config_path = path, sources = {}}
  for key, s in pairs(SETTINGS) do
    local var = "MODAL_" .. key:upper()
    local raw, source
    if opts[key] ~= nil then raw, source = opts[key], "option"
    elseif env[var] ~= nil then raw, source = env[var], var
    elseif section[key] ~= nil then raw, source = section[key], ("profile [%s] of %s"):format(profile, path) end
    local value = s.default
    if raw ~= nil then
      if s.transform and type(raw) ~= "table" then
        local ok, v = pcall(s.transform, type(raw) == "string" and raw or tostring(raw))
        if not ok then
          return fail("config", ("invalid value for Modal setting %s (%s): %s"):format(key, source, errors.message(v)))
        end
        value = v
      else
        value = raw
      end
      if type(value) == "number" and not s.transform then value = tostring(value) end
    end
    cfg[key] = value
    cfg.sources[key] = source or "default"
  end

  if not (cfg.token_id and cfg.token_id ~= "" and cfg.token_secret and cfg.token_secret ~= "") then
    if named and not data[profile] then
      local names = toml.order(data)
      return fail("profile", ("Modal profile '%s' (MODAL_PROFILE) was not found in %s (%s): choose one of those, "
                              .. "or run `modal token new --profile %s`")
                              :format(profile, path, #names > 0 and "profiles: " .. table.concat(names, ", ")
                                                   or fs.exists(path) and "it has no profiles" or "the file does not exist",
                                      profile))
    end
    local missing = (cfg.token_id and cfg.token_id ~= "") and "MODAL_TOKEN_SECRET" or
                    (cfg.token_secret and cfg.token_secret ~= "") and "MODAL_TOKEN_ID" or "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
    return fail("credentials", ("Modal credentials are missing (%s not set, and no token in profile [%s] of %s): "
                                .. "set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new`")
                                :format(missing, profile, path))
  end
  -- from now on no log line, message or result file of this process shows it
  if #cfg.token_secret >= 6 then require("runbox.log").redact(cfg.token_secret) end
  return cfg
end

-- The first server URL of the (comma-separated, failover) list.
function M.server_url(cfg)
  return ((cfg.server_url or M.DEFAULT_SERVER_URL):match("^%s*([^,%s]+)"))
end

return M
