-- Modal configuration: profiles, precedence, the TOML reader, malformed files, unknown profiles,
-- missing credentials; JWT expiry decoding. Pure: no server.
local T = require "runbox.testing"
local fs = require "runbox.fs"
local util = require "runbox.util"
local config = require "runbox.modal.config"
local toml = require "runbox.modal.toml"

local function home_with(text)
  local dir = assert(fs.temp_dir("modal-config"))
  if text then assert(fs.write(dir .. "/.modal.toml", text)) end
  return dir
end

local function load(text, env)
  local home = home_with(text)
  env = env or {}
  local cfg, err = config.load{env = env, home = home}
  fs.remove_tree(home)
  return cfg, err, home
end

T.test("tokens from the environment, defaults for the rest", function()
  local cfg = assert(load(nil, {MODAL_TOKEN_ID = "ak-1", MODAL_TOKEN_SECRET = "as-1"}))
  T.eq(cfg.token_id, "ak-1")
  T.eq(cfg.token_secret, "as-1")
  T.eq(cfg.server_url, "https://api.modal.com,https://api.modal2.com")
  T.eq(config.server_url(cfg), "https://api.modal.com")
  T.eq(cfg.environment, "")
  T.eq(cfg.profile, "default")
  T.eq(cfg.max_throttle_wait, nil)
  T.eq(cfg.sources.token_id, "MODAL_TOKEN_ID")
end)

T.test("the [default] profile of ~/.modal.toml", function()
  local cfg = assert(load([[
# written by modal token set
[default]
token_id = "ak-file"
token_secret = 'as-file'
server_url = "http://127.0.0.1:9000"
environment = "dev"
]]))
  T.eq({cfg.token_id, cfg.token_secret, cfg.server_url, cfg.environment}, {"ak-file", "as-file", "http://127.0.0.1:9000", "dev"})
  T.match(cfg.sources.token_id, "profile %[default%]")
end)

T.test("the active profile wins over default; MODAL_PROFILE over active", function()
  local text = [[
[default]
token_id = "ak-default"
token_secret = "as-default"

[work]
token_id = "ak-work"
token_secret = "as-work"
active = true
]]
  local cfg = assert(load(text))
  T.eq(cfg.profile, "work")
  T.eq(cfg.token_id, "ak-work")
  cfg = assert(load(text, {MODAL_PROFILE = "default"}))
  T.eq(cfg.profile, "default")
  T.eq(cfg.token_id, "ak-default")
end)

T.test("environment variables win over the profile, per key", function()
  local cfg = assert(load([[
[default]
token_id = "ak-file"
token_secret = "as-file"
environment = "file-env"
max_throttle_wait = 30
]], {MODAL_TOKEN_SECRET = "as-env", MODAL_ENVIRONMENT = "env-env"}))
  T.eq(cfg.token_id, "ak-file")
  T.eq(cfg.token_secret, "as-env")
  T.eq(cfg.environment, "env-env")
  T.eq(cfg.max_throttle_wait, 30)
end)

T.test("MODAL_CONFIG_PATH names the file", function()
  local dir = home_with(nil)
  local path = dir .. "/elsewhere.toml"
  fs.write(path, '[default]\ntoken_id = "ak-p"\ntoken_secret = "as-p"\n')
  local cfg = assert(config.load{env = {MODAL_CONFIG_PATH = path}, home = dir})
  T.eq(cfg.token_id, "ak-p")
  T.eq(cfg.config_path, path)
  fs.remove_tree(dir)
end)

T.test("settings: max_throttle_wait, override headers, booleans", function()
  local cfg = assert(load(nil, {MODAL_TOKEN_ID = "a", MODAL_TOKEN_SECRET = "b", MODAL_MAX_THROTTLE_WAIT = "0",
                                MODAL_OVERRIDE_HEADERS = "x-a: 1, X-B:two", MODAL_FORCE_BUILD = "1"}))
  T.eq(cfg.max_throttle_wait, 0)
  T.eq(cfg.override_headers, {["x-a"] = "1", ["x-b"] = "two"})
  T.eq(cfg.force_build, true)
  local _, err = load(nil, {MODAL_TOKEN_ID = "a", MODAL_TOKEN_SECRET = "b", MODAL_MAX_THROTTLE_WAIT = "soon"})
  T.match(err.message, "max_throttle_wait %(MODAL_MAX_THROTTLE_WAIT%): must be a whole number")
end)

T.test("missing credentials say what to do", function()
  local _, err = load(nil, {})
  T.eq(err.code, "modal")
  T.eq(err.reason, "credentials")
  T.match(err.message, "set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new`")
  _, err = load(nil, {MODAL_TOKEN_ID = "ak-only"})
  T.match(err.message, "MODAL_TOKEN_SECRET not set")
  _, err = load('[default]\ntoken_id = "ak"\n')
  T.match(err.message, "MODAL_TOKEN_SECRET not set")
end)

T.test("an unknown profile names the file and the profiles there", function()
  local _, err, home = load('[default]\ntoken_id = "a"\ntoken_secret = "b"\n[ci]\ntoken_id = "c"\ntoken_secret = "d"\nactive = true\n',
                            {MODAL_PROFILE = "prod"})
  T.eq(err.reason, "profile")
  T.match(err.message, "Modal profile 'prod' %(MODAL_PROFILE%) was not found in " .. home:gsub("%p", "%%%0") .. "/.modal.toml")
  T.match(err.message, "profiles: default, ci")
  -- as in the Python client, tokens from the environment make the file unnecessary
  local cfg = assert(load('[default]\ntoken_id = "a"\ntoken_secret = "b"\n', {MODAL_PROFILE = "prod",
                          MODAL_TOKEN_ID = "x", MODAL_TOKEN_SECRET = "y"}))
  T.eq(cfg.token_id, "x")
  _, err = load(nil, {MODAL_PROFILE = "prod"})
  T.match(err.message, "the file does not exist")
end)

T.test("several active profiles, or several and none active, are errors", function()
  local _, err = load('[a]\nactive = true\n[b]\nactive = true\n')
  T.match(err.message, "more than one Modal profile is active in .*%(a, b%)")
  _, err = load('[a]\ntoken_id = "x"\n[b]\ntoken_id = "y"\n')
  T.match(err.message, "no Modal profile is active in .*profiles: a, b")
  -- MODAL_PROFILE picks one
  local cfg = assert(load('[a]\ntoken_id = "x"\ntoken_secret = "s"\n[b]\ntoken_id = "y"\n', {MODAL_PROFILE = "a"}))
  T.eq(cfg.token_id, "x")
end)

T.test("a malformed file: the error names the file and the line", function()
  local cases = {
    {'[default]\ntoken_id = "ak\n', ":2: unterminated string"},
    {'[default]\ntoken_secret = as-SuperSecret1\n', ":2: a value that is neither .*%(strings need quotes%)"},
    {'[default]\n\n\ntoken_id "x"\n', ":4: '=' expected after key 'token_id'"},
    {'[default\ntoken_id = "x"\n', ":1: ']' expected after table name default"},
    {'[default]\ntoken_id = "a"\ntoken_id = "b"\n', ":3: key 'token_id' is defined twice"},
    {'[default]\n[default]\n', ":2: table %[default%] is defined twice"},
    {'token_id = "x"\n', "'token_id' is not a %[profile%] table"},
    {'[default]\ntoken_id = "a" token_secret = "b"\n', ":2: unexpected 't' after a value"},
    {'[default]\nx = "bad \\q escape"\n', ":2: unknown escape \\q"},
    {'[default]\nx = [1, 2\n', ":3: unterminated array"},
  }
  for _, c in ipairs(cases) do
    local _, err, home = load(c[1])
    T.ok(err, "no error for " .. c[1])
    T.eq(err.reason, "config")
    T.match(err.message, home:gsub("%p", "%%%0") .. "/%.modal%.toml", c[1])
    T.match(err.message, c[2], c[1])
    T.ok(not err.message:find("SuperSecret", 1, true), "a value is never repeated in the message")
  end
end)

T.test("toml: values of every kind", function()
  local t = assert(toml.parse([=[
# comment
title = "TOML \"example\" \u00e9\ttab"
lit = 'C:\path\no escape'
multi = """
first
second \
   joined"""
multilit = '''
raw \n'''
int = 1_000
neg = -17
hex = 0xff
oct = 0o17
bin = 0b101
flt = 3.5e2
inf = -inf
yes = true
no = false
date = 1979-05-27T07:32:00Z
arr = [1, [2, 3], "x", ] # trailing comma
inline = {a = 1, "b c" = {d = true}}
[server.alpha]
ip = "10.0.0.1"
dotted.key = "v"
[[items]]
n = 1
[[items]]
n = 2
]=], "t.toml"))
  T.eq(t.title, 'TOML "example" é\ttab')
  T.eq(t.lit, "C:\\path\\no escape")
  T.eq(t.multi, "first\nsecond joined")
  T.eq(t.multilit, "raw \\n")
  T.eq({t.int, t.neg, t.hex, t.oct, t.bin}, {1000, -17, 255, 15, 5})
  T.eq(t.flt, 350.0)
  T.eq(t.inf, -math.huge)
  T.eq({t.yes, t.no}, {true, false})
  T.eq(t.date, "1979-05-27T07:32:00Z")
  T.eq(t.arr, {1, {2, 3}, "x"})
  T.eq(t.inline, {a = 1, ["b c"] = {d = true}})
  T.eq(t.server.alpha.ip, "10.0.0.1")
  T.eq(t.server.alpha.dotted.key, "v")
  T.eq(t.items, {{n = 1}, {n = 2}})
  T.eq(toml.order(t)[1], "title")
end)

T.test("toml: more malformed input", function()
  for _, c in ipairs{
    {"a = 01", "leading zeros"},
    {"a = 1__0", "misplaced '_'"},
    {"a = {b = 1", "',' or '}' expected"},
    {"a = 1\na.b = 2", "already defined as a value"},
    {'a = "x\001"', "control character"},
    {"= 1", "a key was expected"},
    {"a =", "a value is missing"},
    {"[[a]]\n[a]", "defined twice"},
  } do
    local v, err = toml.parse(c[1], "f.toml")
    T.eq(v, nil, c[1])
    T.match(err, "^f%.toml:%d+: ", c[1])
    T.match(err, c[2], c[1])
  end
end)

T.test("JWT expiry: standard and url-safe base64 payloads", function()
  local jwt = require "runbox.modal.jwt"
  local function token(payload, urlsafe)
    local b = util.base64_encode(payload):gsub("=+$", "")
    if urlsafe then b = b:gsub("+", "-"):gsub("/", "_") end
    return "eyJhbGciOiJIUzI1NiJ9." .. b .. ".sig"
  end
  T.eq(jwt.expiry(token('{"exp": 1900000000, "sub": "x"}')), 1900000000)
  -- a payload whose base64 has '-' / '_' in the url-safe alphabet
  local p = '{"exp":1900000001,"n":"\255\254\253>>>???"}'
  T.eq(jwt.expiry(token(p, true)), 1900000001)
  T.eq(jwt.expiry(token(p, false)), 1900000001)
  T.eq(jwt.expiry("not a jwt"), nil)
  T.eq(jwt.expiry(token('{"sub": "no exp"}')), nil)
end)

T.run()
