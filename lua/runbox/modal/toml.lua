-- A small TOML reader for ~/.modal.toml: tables ([a], [a.b], [[a]]), keys (bare, quoted, dotted),
-- strings (basic, literal, multi-line), integers, floats, booleans, arrays, inline tables. Dates
-- and times are kept as their text. Tables come back as Lua tables; toml.order(t) lists a table's
-- keys in file order. A malformed file gives nil, "NAME:LINE: what is wrong".
local M = {}

local order_of = setmetatable({}, {__mode = "k"})   -- table -> its keys in file order

function M.order(t) return order_of[t] or {} end

local function new_table()
  local t = {}
  order_of[t] = {}
  return t
end

local function set(t, k, v)
  t[k] = v
  local o = order_of[t]
  if o then o[#o + 1] = k end
end

local Parser = {}
Parser.__index = Parser

function Parser:fail(msg, pos)
  local upto = self.s:sub(1, (pos or self.i) - 1)
  local _, nl = upto:gsub("\n", "")
  error({toml = ("%s:%d: %s"):format(self.name, nl + 1, msg)}, 0)
end

function Parser:peek(n) return self.s:sub(self.i, self.i + (n or 1) - 1) end

-- Spaces and tabs (not newlines).
function Parser:ws() self.i = self.s:match("^[ \t]*()", self.i) end

-- Spaces, newlines and comments.
function Parser:ws_nl()
  while true do
    local j = self.s:match("^[ \t\r\n]*()", self.i)
    self.i = j
    if self:peek() == "#" then self:comment() else return end
  end
end

function Parser:comment()
  local e = self.s:find("\n", self.i, true) or #self.s + 1
  local text = self.s:sub(self.i, e - 1)
  if text:find("[%z\1-\8\11-\31\127]") then self:fail("control character in a comment") end
  self.i = e
end

-- The end of a line: only blanks and a comment may follow a value or a header.
function Parser:eol()
  self:ws()
  if self:peek() == "#" then self:comment() end
  local c = self:peek()
  if c == "\r" and self:peek(2) == "\r\n" then self.i = self.i + 2 return end
  if c == "\n" then self.i = self.i + 1 return end
  if c == "" then return end
  self:fail(("unexpected '%s' after a value (one key = value per line)"):format(c))
end

local ESCAPES = {b = "\b", t = "\t", n = "\n", f = "\f", r = "\r", e = "\27", ['"'] = '"', ["\\"] = "\\"}

local function utf8_of(self, hex)
  local cp = tonumber(hex, 16)
  if not cp or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
    self:fail("invalid unicode escape \\u" .. hex)
  end
  return utf8.char(cp)
end

-- A basic string ("..." or """..."""), the opening quote(s) at self.i.
function Parser:basic_string()
  local multi = self:peek(3) == '"""'
  local s, i, out = self.s, self.i + (multi and 3 or 1), {}
  if multi then   -- a newline right after the opening quotes is dropped
    if s:sub(i, i) == "\n" then i = i + 1 elseif s:sub(i, i + 1) == "\r\n" then i = i + 2 end
  end
  while true do
    local c = s:sub(i, i)
    if c == "" then self.i = i; self:fail("unterminated string") end
    if c == '"' then
      if not multi then self.i = i + 1; return table.concat(out) end
      if s:sub(i, i + 2) == '"""' then
        local run = s:match('^"*', i)   -- up to two quotes may end the content
        if #run > 5 then self.i = i; self:fail("too many quotes at the end of a multi-line string") end
        out[#out + 1] = run:sub(1, #run - 3)
        self.i = i + #run
        return table.concat(out)
      end
      out[#out + 1] = c; i = i + 1
    elseif c == "\\" then
      local e = s:sub(i + 1, i + 1)
      if ESCAPES[e] then out[#out + 1] = ESCAPES[e]; i = i + 2
      elseif e == "u" or e == "U" then
        local n = e == "u" and 4 or 8
        local hex = s:sub(i + 2, i + 1 + n)
        if #hex ~= n or hex:find("%X") then self.i = i; self:fail("bad unicode escape in a string") end
        out[#out + 1] = utf8_of(self, hex); i = i + 2 + n
      elseif multi and s:match("^[ \t]*\r?\n", i + 1) then   -- line-ending backslash: trim
        i = s:match("^[ \t\r\n]*()", i + 1)
      else
        self.i = i; self:fail(("unknown escape \\%s in a string"):format(e))
      end
    elseif c == "\n" and not multi then
      self.i = i; self:fail("unterminated string (a line ends inside it)")
    elseif c:find("[%z\1-\8\11-\31\127]") and not (c == "\r" and multi) then
      self.i = i; self:fail("control character in a string (escape it)")
    else
      local j = s:match(multi and '^[^"\\%z\1-\8\11-\31\127]+()' or '^[^"\\%z\1-\8\10-\31\127]+()', i) or i + 1
      out[#out + 1] = s:sub(i, j - 1); i = j
    end
  end
end

-- A literal string ('...' or '''...'''), no escapes.
function Parser:literal_string()
  local s = self.s
  if self:peek(3) == "'''" then
    local i = self.i + 3
    if s:sub(i, i) == "\n" then i = i + 1 elseif s:sub(i, i + 1) == "\r\n" then i = i + 2 end
    local e = s:find("'''", i, true)
    if not e then self:fail("unterminated multi-line literal string") end
    local run = s:match("^'*", e)
    if #run > 5 then self.i = e; self:fail("too many quotes at the end of a multi-line string") end
    self.i = e + #run
    return s:sub(i, e - 1) .. run:sub(1, #run - 3)
  end
  local e = s:find("[\n']", self.i + 1)
  if not e or s:sub(e, e) ~= "'" then self:fail("unterminated literal string") end
  local v = s:sub(self.i + 1, e - 1)
  self.i = e + 1
  return v
end

function Parser:key_part()
  local c = self:peek()
  if c == '"' then
    if self:peek(3) == '"""' then self:fail("a key cannot be a multi-line string") end
    return self:basic_string()
  elseif c == "'" then
    if self:peek(3) == "'''" then self:fail("a key cannot be a multi-line string") end
    return self:literal_string()
  end
  local k, j = self.s:match("^([%w_-]+)()", self.i)
  if not k then
    self:fail(c == "" and "a key is missing" or ("a key was expected, found '%s'"):format(c == "\n" and "end of line" or c))
  end
  self.i = j
  return k
end

-- A dotted key: list of parts.
function Parser:key()
  local parts = {}
  while true do
    self:ws()
    parts[#parts + 1] = self:key_part()
    self:ws()
    if self:peek() ~= "." then return parts end
    self.i = self.i + 1
  end
end

local function number_of(self, text, start)
  local t = text:gsub("_", "")
  if text:find("^_") or text:find("_$") or text:find("__") or text:find("_[^%x]") or text:find("[^%x]_") then
    self:fail("misplaced '_' in a number", start)
  end
  local sign, body = t:match("^([+-]?)(.*)$")
  if body == "inf" then return sign == "-" and -math.huge or math.huge end
  if body == "nan" then return 0 / 0 end
  local prefix, digits = body:match("^0([xob])(.+)$")
  if prefix then
    if sign ~= "" then self:fail("a sign is not allowed on this number", start) end
    local base = ({x = 16, o = 8, b = 2})[prefix]
    local ok = ({x = "^%x+$", o = "^[0-7]+$", b = "^[01]+$"})[prefix]
    if not digits:find(ok) then self:fail("bad number", start) end
    return math.tointeger(tonumber(digits, base))
  end
  if body:find("^%d+$") then
    if body:find("^0%d") then self:fail("leading zeros are not allowed in a number", start) end
    local n = math.tointeger(tonumber(t))
    if not n then self:fail("integer out of range", start) end
    return n
  end
  if body:find("^%d+%.%d+$") or body:find("^%d+[eE][+-]?%d+$") or body:find("^%d+%.%d+[eE][+-]?%d+$") then
    if body:find("^0%d") then self:fail("leading zeros are not allowed in a number", start) end
    return tonumber(t) + 0.0
  end
  -- the value itself is not repeated: it may be a secret written without quotes
  self:fail("a value that is neither a quoted string, a number, a boolean, an array nor a table (strings need quotes)", start)
end

function Parser:value(depth)
  if depth > 100 then self:fail("values nested too deeply") end
  local c, s, i = self:peek(), self.s, self.i
  if c == '"' then return self:basic_string() end
  if c == "'" then return self:literal_string() end
  if c == "[" then return self:array(depth) end
  if c == "{" then return self:inline_table(depth) end
  if s:find("^true", i) and not s:find("^[%w_-]", i + 4) then self.i = i + 4 return true end
  if s:find("^false", i) and not s:find("^[%w_-]", i + 5) then self.i = i + 5 return false end
  -- dates and times: kept as text
  local date = s:match("^%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d[%.%d]*[Zz]?", i)
            or s:match("^%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d[%.%d]*[+-]%d%d:%d%d", i)
            or s:match("^%d%d%d%d%-%d%d%-%d%d", i) or s:match("^%d%d:%d%d:%d%d[%.%d]*", i)
  if date then
    local full = s:match("^%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d[%.%d]*[+-]%d%d:%d%d", i)
              or s:match("^%d%d%d%d%-%d%d%-%d%d[Tt]%d%d:%d%d:%d%d[%.%d]*[Zz]?", i)
              or s:match("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d[%.%d]*[Zz]?", i) or date
    self.i = i + #full
    return full
  end
  local text = s:match("^[%w_+.-]+", i)
  if not text then
    self:fail(c == "" and "a value is missing at the end of the file"
              or (c == "\n" or c == "\r") and "a value is missing after '='"
              or ("a value was expected, found '%s'"):format(c))
  end
  self.i = i + #text
  return number_of(self, text, i)
end

function Parser:array(depth)
  self.i = self.i + 1
  local arr = {}
  while true do
    self:ws_nl()
    if self:peek() == "]" then self.i = self.i + 1 return arr end
    arr[#arr + 1] = self:value(depth + 1)
    self:ws_nl()
    local c = self:peek()
    if c == "," then self.i = self.i + 1
    elseif c == "]" then self.i = self.i + 1 return arr
    else self:fail(c == "" and "unterminated array" or ("',' or ']' expected in an array, found '%s'"):format(c)) end
  end
end

-- Walks/creates the tables of a dotted key's leading parts inside t. defined marks tables made
-- final (inline tables, values) that may not be extended.
function Parser:descend(t, parts, last, keyname)
  for n = 1, last do
    local k = parts[n]
    local v = t[k]
    if v == nil then
      v = new_table()
      set(t, k, v)
    elseif type(v) ~= "table" or self.sealed[v] then
      self:fail(("key '%s' is already defined as a value"):format(keyname))
    elseif self.arrays[v] then
      v = v[#v]
    end
    t = v
  end
  return t
end

function Parser:keyval(t, depth)
  local start = self.i
  local parts = self:key()
  local keyname = table.concat(parts, ".")
  if self:peek() ~= "=" then
    self:fail(("'=' expected after key '%s'"):format(keyname))
  end
  self.i = self.i + 1
  self:ws()
  local holder = self:descend(t, parts, #parts - 1, keyname)
  local last = parts[#parts]
  if holder[last] ~= nil then self:fail(("key '%s' is defined twice"):format(keyname), start) end
  local v = self:value(depth)
  if type(v) == "table" then self.sealed[v] = true end
  set(holder, last, v)
end

function Parser:inline_table(depth)
  self.i = self.i + 1
  local t = new_table()
  self:ws()
  if self:peek() == "}" then self.i = self.i + 1 return t end
  while true do
    self:keyval(t, depth + 1)
    self:ws()
    local c = self:peek()
    if c == "," then self.i = self.i + 1
    elseif c == "}" then self.i = self.i + 1 return t
    else self:fail("',' or '}' expected in an inline table (it must stay on one line)") end
  end
end

function Parser:header(root)
  local start = self.i
  local is_array = self:peek(2) == "[["
  self.i = self.i + (is_array and 2 or 1)
  local parts = self:key()
  local name = table.concat(parts, ".")
  if is_array then
    if self:peek(2) ~= "]]" then self:fail("']]' expected after table name " .. name) end
    self.i = self.i + 2
  else
    if self:peek() ~= "]" then self:fail("']' expected after table name " .. name) end
    self.i = self.i + 1
  end
  self:eol()
  self.i, start = start, self.i   -- errors below are about this line
  local parent = self:descend(root, parts, #parts - 1, name)
  local last = parts[#parts]
  local existing = parent[last]
  if is_array then
    if existing == nil then
      existing = {}
      self.arrays[existing] = true
      set(parent, last, existing)
    elseif not self.arrays[existing] then
      self:fail(("[[%s]]: '%s' is already defined as something else"):format(name, name))
    end
    local t = new_table()
    existing[#existing + 1] = t
    self.i = start
    return t
  end
  if existing == nil then
    existing = new_table()
    set(parent, last, existing)
  elseif type(existing) ~= "table" or self.sealed[existing] or self.arrays[existing] or self.headers[existing] then
    self:fail(("table [%s] is defined twice"):format(name))
  end
  self.headers[existing] = true
  self.i = start
  return existing
end

-- Parses TOML text; name is used in messages (the file's path). Returns the root table or
-- nil, "name:line: message".
function M.parse(text, name)
  local p = setmetatable({s = text, i = 1, name = name or "toml", sealed = {}, arrays = {}, headers = {}}, Parser)
  if text:sub(1, 3) == "\239\187\191" then p.i = 4 end   -- UTF-8 byte order mark
  local root = new_table()
  local ok, err = pcall(function()
    local current = root
    while true do
      p:ws_nl()
      local c = p:peek()
      if c == "" then return end
      if c == "[" then
        current = p:header(root)
      else
        p:keyval(current, 0)
        p:eol()
      end
    end
  end)
  if not ok then
    if type(err) == "table" and err.toml then return nil, err.toml end
    error(err, 0)
  end
  return root
end

return M
