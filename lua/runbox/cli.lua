-- A small argument parser for recipes: flags with values (--out DIR, --out=DIR), booleans,
-- positional arguments, generated --help text, and errors that name the flag.
--
--   local cli = require "runbox.cli"
--   local args = cli.main({name = "prepare", positional = {{name = "created_dir"}},
--                          flags = {{name = "out", value = "DIR", default = "data/tasks/prepared"}}}, {...})
local errors = require "runbox.errors"

local M = {}

local function key_of(name) return (name:gsub("-", "_")) end

local function check_spec(spec)
  if type(spec) ~= "table" or type(spec.name) ~= "string" then
    error("bad argument #1 (spec table with a name expected)", 3)
  end
  for _, f in ipairs(spec.flags or {}) do
    if type(f.name) ~= "string" or f.name:sub(1, 1) == "-" then
      error("cli spec: each flag needs a name without dashes, e.g. {name = \"out\"}", 3)
    end
    if f.type and f.type ~= "string" and f.type ~= "integer" and f.type ~= "number" then
      error(("cli spec: flag '%s' has unknown type '%s' (string, integer or number)"):format(f.name, f.type), 3)
    end
  end
  for _, p in ipairs(spec.positional or {}) do
    if type(p.name) ~= "string" then error("cli spec: each positional argument needs a name", 3) end
  end
end

local function prog(spec) return spec.prog or ("runbox " .. spec.name) end

local function usage_error(spec, message, flag)
  return nil, errors.new("usage", ("%s: %s (see %s --help)"):format(prog(spec), message, prog(spec)), {flag = flag})
end

local function metavar(p) return p.metavar or (p.name:upper():gsub("-", "_")) end

-- The usage line: runbox NAME POS [OPT] REST... [--flag VALUE]...
local function usage_line(spec)
  if spec.usage then return spec.usage end
  local parts = {prog(spec)}
  for _, p in ipairs(spec.positional or {}) do
    local m = metavar(p) .. (p.rest and "..." or "")
    parts[#parts + 1] = (p.required == false or p.rest and p.required ~= true) and ("[" .. m .. "]") or m
  end
  for _, f in ipairs(spec.flags or {}) do
    parts[#parts + 1] = ("[--%s%s]"):format(f.name, f.value and (" " .. f.value) or "")
  end
  return table.concat(parts, " ")
end

-- cli.help(spec) -> text
function M.help(spec)
  check_spec(spec)
  local out = {"usage: " .. usage_line(spec)}
  if spec.summary then out[#out + 1] = "\n" .. spec.summary end
  local rows = {}
  for _, p in ipairs(spec.positional or {}) do
    rows[#rows + 1] = {"  " .. metavar(p) .. (p.rest and "..." or ""), p.help or ""}
  end
  local flag_rows = {}
  for _, f in ipairs(spec.flags or {}) do
    local left = "  " .. (f.short and ("-" .. f.short .. ", ") or "") .. "--" .. f.name .. (f.value and (" " .. f.value) or "")
    local notes = {f.help}
    if f.choices then notes[#notes + 1] = "(" .. table.concat(f.choices, ", ") .. ")" end
    if f.default ~= nil then notes[#notes + 1] = ("(default: %s)"):format(tostring(f.default)) end
    if f.env then notes[#notes + 1] = ("(env: %s)"):format(f.env) end
    if f.multi then notes[#notes + 1] = "(repeatable)" end
    flag_rows[#flag_rows + 1] = {left, table.concat(notes, " ")}
  end
  flag_rows[#flag_rows + 1] = {"  -h, --help", "show this help and exit"}
  local width = 0
  for _, r in ipairs(rows) do width = math.max(width, #r[1]) end
  for _, r in ipairs(flag_rows) do width = math.max(width, #r[1]) end
  local function add(title, list)
    if #list == 0 then return end
    out[#out + 1] = "\n" .. title .. ":"
    for _, r in ipairs(list) do
      out[#out + 1] = (r[2] ~= "" and ("%-" .. width .. "s  %s") or "%s"):format(r[1], r[2])
    end
  end
  add("arguments", rows)
  add("options", flag_rows)
  if spec.epilog then out[#out + 1] = "\n" .. spec.epilog end
  return table.concat(out, "\n") .. "\n"
end

-- Checks and converts one flag value; `source` names where it came from in errors.
local function convert(spec, f, v, source)
  if f.type == "integer" or f.type == "number" then
    local n = tonumber(v)
    if f.type == "integer" then n = n and math.tointeger(n) end
    if not n then
      return usage_error(spec, ("%s expects %s, got '%s'"):format(source,
                         f.type == "integer" and "a whole number" or "a number", v), "--" .. f.name)
    end
    if f.min and n < f.min then
      return usage_error(spec, ("%s must be at least %s, got '%s'"):format(source, tostring(f.min), v), "--" .. f.name)
    end
    v = n
  end
  if f.choices then
    local ok = false
    for _, c in ipairs(f.choices) do if c == v then ok = true end end
    if not ok then
      return usage_error(spec, ("%s must be one of %s, got '%s'"):format(source, table.concat(f.choices, ", "), v),
                         "--" .. f.name)
    end
  end
  return v
end

local function find_flag(spec, long, short)
  for _, f in ipairs(spec.flags or {}) do
    if (long and f.name == long) or (short and f.short == short) then return f end
  end
end

local function set_flag(spec, args, f, v)
  local value, err = convert(spec, f, v, ("flag '--%s'"):format(f.name))
  if value == nil then return nil, err end
  local k = key_of(f.name)
  if f.multi then
    args[k] = args[k] or {}
    table.insert(args[k], value)
  else
    args[k] = value
  end
  return true
end

local function assign_positional(spec, args, values)
  local specs, i = spec.positional or {}, 1
  for _, p in ipairs(specs) do
    local k = key_of(p.name)
    if p.rest then
      args[k] = {}
      for j = i, #values do args[k][#args[k] + 1] = values[j] end
      if p.required == true and #args[k] == 0 then
        return usage_error(spec, ("missing %s"):format(metavar(p)), metavar(p))
      end
      i = #values + 1
    elseif values[i] ~= nil then
      args[k] = values[i]
      i = i + 1
    elseif p.required ~= false then
      return usage_error(spec, ("missing %s"):format(metavar(p)), metavar(p))
    end
  end
  if values[i] ~= nil then return usage_error(spec, ("unexpected argument '%s'"):format(values[i])) end
  return true
end

local function fill_defaults(spec, args)
  for _, f in ipairs(spec.flags or {}) do
    local k = key_of(f.name)
    if args[k] == nil then
      local env = f.env and os.getenv(f.env)
      if env and env ~= "" then
        local value, err = convert(spec, f, env, ("environment variable %s"):format(f.env))
        if value == nil then return nil, err end
        args[k] = f.multi and {value} or value
      elseif f.default ~= nil then
        args[k] = f.default
      elseif not f.value then
        args[k] = false
      elseif f.multi then
        args[k] = {}
      end
    end
  end
  return true
end

-- cli.parse(spec, argv) -> args | nil, err. args.help is true when --help or -h was given (and
-- nothing else is checked then). err.code is "usage", err.flag the flag at fault.
function M.parse(spec, argv)
  check_spec(spec)
  if type(argv) ~= "table" then error("bad argument #2 to 'parse' (list of arguments expected)", 2) end
  for _, a in ipairs(argv) do
    if a == "--" then break end
    if a == "--help" or a == "-h" then return {help = true} end
  end
  local args, values, i, rest = {help = false}, {}, 1, false
  while i <= #argv do
    local a = tostring(argv[i])
    if rest or a == "-" or a:sub(1, 1) ~= "-" then
      values[#values + 1] = a
    elseif a == "--" then
      rest = true
    else
      local long, inline = a:match("^%-%-([^=]+)=(.*)$")
      if not long then long = a:match("^%-%-(.+)$") end
      local short = not long and a:match("^%-(%w)$")
      local f = find_flag(spec, long, short)
      if not f then return usage_error(spec, ("unknown flag '%s'"):format(long and ("--" .. long) or a), a) end
      local shown = "--" .. f.name
      if not f.value then
        if inline then return usage_error(spec, ("flag '%s' takes no value"):format(shown), shown) end
        args[key_of(f.name)] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = argv[i]
          if v == nil then return usage_error(spec, ("flag '%s' needs a value (%s)"):format(shown, f.value), shown) end
        end
        local ok, err = set_flag(spec, args, f, tostring(v))
        if not ok then return nil, err end
      end
    end
    i = i + 1
  end
  local ok, err = assign_positional(spec, args, values)
  if not ok then return nil, err end
  ok, err = fill_defaults(spec, args)
  if not ok then return nil, err end
  return args
end

-- cli.main(spec, argv) -> args: like parse, but prints the help and exits 0 for --help, and
-- prints the error and exits 2 for a usage error.
function M.main(spec, argv)
  local args, err = M.parse(spec, argv)
  if args and args.help then
    io.stdout:write(M.help(spec))
    os.exit(0)
  end
  if not args then
    io.stderr:write(tostring(err), "\n")
    os.exit(2)
  end
  return args
end

return M
