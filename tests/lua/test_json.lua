local T = require "runbox.testing"
local json = require "runbox.json"
local fs = require "runbox.fs"
local errors = require "runbox.errors"

T.test("decode scalars and containers", function()
  T.eq(json.decode("true"), true)
  T.eq(json.decode(" false "), false)
  T.eq(json.decode("null"), json.null)
  T.eq(json.decode('"hi"'), "hi")
  T.eq(json.decode("[1, [2, [3]], {}]"), {1, {2, {3}}, {}})
  T.eq(json.decode('{"a": {"b": [true, false]}, "c": "d"}'), {a = {b = {true, false}}, c = "d"})
  T.eq(json.decode('{"1": "string key"}'), {["1"] = "string key"})
  T.eq(json.decode('{"a": 1, "a": 2}').a, 2)   -- the last duplicate wins
  T.eq(json.decode("\239\187\191[1]"), {1})    -- UTF-8 byte order mark
  T.eq(json.decode(" \t\r\n[ ]\n"), {})
end)

T.test("decode keeps integers as integers", function()
  local t = json.decode("[0, -1, 42, 9007199254740993, 9223372036854775807, -9223372036854775808]")
  T.eq(t, {0, -1, 42, 9007199254740993, math.maxinteger, math.mininteger})
  for i = 1, #t do T.eq(math.type(t[i]), "integer", "element " .. i) end
  local f = json.decode("[1.0, 1e2, 2.5, -0.5, 1E-3, 9223372036854775808, 123456789012345678901234]")
  for i = 1, #f do T.eq(math.type(f[i]), "float", "element " .. i) end
  T.eq(f[2], 100.0)
  T.eq(f[6], 9223372036854775808.0)
end)

T.test("decode strings with escapes and unicode", function()
  T.eq(json.decode([["a\"b\\c\/d\b\f\n\r\t"]]), "a\"b\\c/d\b\f\n\r\t")
  T.eq(json.decode([["\u0041\u00e9\u20ac"]]), "Aé€")
  T.eq(json.decode([["\ud83d\ude00"]]), "😀")
  T.eq(json.decode([["\ud83d x"]]), "\u{fffd} x")     -- a lone surrogate
  T.eq(json.decode([["\ude00"]]), "\u{fffd}")
  T.eq(json.decode('"raw é 😀"'), "raw é 😀")
  T.eq(json.decode('"nul\\u0000byte"'), "nul\0byte")
end)

T.test("null is json.null everywhere, so keys and positions survive", function()
  local t = json.decode('{"a": null, "b": [1, null, 3]}')
  T.eq(t.a, json.null)
  T.eq(#t.b, 3)
  T.eq(t.b[2], json.null)
  T.eq(json.null, json.decode("null"))
  T.eq(type(json.null), "userdata")
end)

-- {input, position (byte), pattern}
local BAD = {
  {"", 1, "unexpected end of input"},
  {"   ", 4, "unexpected end of input"},
  {"[1, 2", 6, "expected ',' or ']' in an array"},
  {"[1 2]", 4, "expected ',' or ']' in an array"},
  {"[1,]", 4, "unexpected character ']'"},
  {'{"a":1,}', 8, "expected a string key in an object"},
  {"{'a': 1}", 2, "expected a string key"},
  {'{"a" 1}', 6, "expected ':' after an object key"},
  {'{"a": 1', 8, "expected ',' or '}' in an object"},
  {'"abc', 1, "unterminated string"},
  {'"a\nb"', 3, "control character in a string"},
  {'"\\x"', 2, "invalid escape in a string"},
  {'"\\u12"', 2, "invalid \\u escape"},
  {"01", 1, "invalid number (leading zero)"},
  {"1.", 1, "invalid number (digits must follow '.')"},
  {"1e", 1, "invalid number (digits must follow the exponent)"},
  {"-", 1, "invalid number"},
  {".5", 1, "unexpected character '.'"},
  {"NaN", 1, "unexpected character 'N'"},
  {"Infinity", 1, "unexpected character 'I'"},
  {"-Infinity", 1, "invalid number"},
  {"tru", 1, "invalid literal"},
  {"nul", 1, "invalid literal"},
  {"[1] x", 5, "unexpected data after the JSON value"},
  {"{} {}", 4, "unexpected data after the JSON value"},
}

T.test("bad JSON gives nil, err with the position, never an error", function()
  for _, c in ipairs(BAD) do
    local ok, v, err = pcall(json.decode, c[1])
    T.ok(ok, "decode raised on " .. c[1])
    T.eq(v, nil, c[1])
    T.ok(errors.is(err, "json"), c[1])
    T.eq(err.position, c[2], "position for " .. c[1])
    T.match(tostring(err), "^invalid JSON: " .. c[3]:gsub("%p", "%%%0"), c[1])
    T.match(tostring(err), "line 1, column " .. c[2] .. " %(byte " .. c[2] .. "%)$", c[1])
  end
end)

T.test("error positions count lines and columns", function()
  local _, err = json.decode('{\n  "a": 1,\n  "b": [1, 2,, 3]\n}')
  T.eq(err.line, 3)
  T.eq(err.column, 14)
  T.match(tostring(err), "unexpected character ',' at line 3, column 14 %(byte 26%)")
end)

T.test("deep nesting is an error, not a crash", function()
  local v, err = json.decode(("["):rep(100000))
  T.eq(v, nil)
  T.match(tostring(err), "nested deeper than 1000 levels")
  T.eq(#json.decode(("["):rep(999) .. ("]"):rep(999)), 1)
  T.raises("bad argument", json.decode, nil)
  T.raises("bad argument", json.decode, {})
end)

T.test("encode numbers, strings and literals", function()
  T.eq(json.encode(1), "1")
  T.eq(json.encode(-0), "0")
  T.eq(json.encode(1.0), "1.0")
  T.eq(json.encode(0.1), "0.1")
  T.eq(json.encode(0.1 + 0.2), "0.30000000000000004")
  T.eq(json.encode(1e300), "1e+300")
  T.eq(json.encode(-2.5e-8), "-2.5e-08")
  T.eq(json.encode(math.maxinteger), "9223372036854775807")
  T.eq(json.encode(math.mininteger), "-9223372036854775808")
  T.eq(json.encode(123456789012345678), "123456789012345678")
  T.eq(json.encode(true), "true")
  T.eq(json.encode(nil), "null")
  T.eq(json.encode(json.null), "null")
  T.eq(json.encode('a"b\\c/d\n\t\1\31'), [["a\"b\\c/d\n\t\u0001\u001f"]])
  T.eq(json.encode("é😀\127"), '"é😀\127"')
  local r = "\u{fffd}"
  T.eq(json.encode("bad \255 utf8 \192\128 \237\160\128"), '"bad ' .. r .. " utf8 " .. r:rep(2) .. " " .. r:rep(3) .. '"')
end)

T.test("encode tables: arrays, objects, sorted keys", function()
  T.eq(json.encode({1, 2, 3}), "[1,2,3]")
  T.eq(json.encode({b = 1, a = 2, c = {z = 1, y = 2}}), '{"a":2,"b":1,"c":{"y":2,"z":1}}')
  T.eq(json.encode({1, 2, x = 3}), '{"1":1,"2":2,"x":3}')
  T.eq(json.encode({[1] = "a", [3] = "c"}), '["a",null,"c"]')          -- a little sparse: array
  T.eq(json.encode({[1000] = 1}), '{"1000":1}')                          -- very sparse: object
  T.eq(json.encode({[-1] = 1, [0] = 2}), '{"-1":1,"0":2}')
  T.eq(json.encode({[1.5] = 1}), '{"1.5":1}')
  T.eq(json.encode({}), "{}")
  T.eq(json.encode({a = {}}), '{"a":{}}')
  T.eq(json.encode(errors.new("x", "msg")), '{"code":"x","message":"msg"}')   -- metatables ignored
  T.eq(json.encode({["\255z"] = 1, ["\254a"] = 2, b = 3}), '{"b":3,"\u{fffd}a":2,"\u{fffd}z":1}')   -- sorted as written
  -- many keys, of every kind, nested: the same order as sorting the written keys
  local big, names = {}, {}
  for i = 1, 60 do
    local k = i % 3 == 0 and ("k" .. (i * 7919) % 101) or i % 3 == 1 and ("\255" .. i) or nil
    if k then big[k] = {inner = {z = i, a = -i}} else big[i * 1000 + 0.5] = i end
  end
  for k in pairs(big) do
    local w = type(k) == "number" and string.format("%.1f", k) or k:gsub("\255", "\u{fffd}")
    names[#names + 1] = w
  end
  table.sort(names)
  local got = {}
  for key in json.encode(big):gmatch('"([^"]+)":[{%d]') do
    if key ~= "inner" and key ~= "a" and key ~= "z" then got[#got + 1] = key end
  end
  T.eq(got, names)
  T.raises("cannot encode a function at %$%[\"\u{fffd}x\"%]%.f", json.encode, {["\255x"] = {f = print}})
end)

T.test("json.array marks tables that encode as [] even when empty", function()
  local t = json.array()
  T.eq(json.encode(t), "[]")
  T.eq(json.is_array(t), true)
  T.eq(json.is_array({}), false)
  T.eq(json.is_array("x"), false)
  local u = {}
  T.eq(json.array(u), u)
  T.eq(json.encode({list = u}), '{"list":[]}')
  u[1] = "x"
  T.eq(json.encode(u), '["x"]')
  local m = setmetatable({}, {__index = function() return 1 end})
  T.eq(json.encode(json.array(m)), "[]")                       -- keeps its own metatable
  T.ok(getmetatable(m).__index, "metatable untouched")
  -- decoded arrays stay arrays
  T.eq(json.encode(json.decode('{"a": [], "b": {}}')), '{"a":[],"b":{}}')
  T.raises("bad argument", json.array, 5)
end)

T.test("encode raises on what JSON cannot hold, naming where", function()
  T.raises("cannot encode a function at %$%.a%.b%[3%]", json.encode, {a = {b = {1, 2, print}}})
  T.raises("cannot encode NaN %(JSON has no such number%) at %$%[\"x y\"%]", json.encode, {["x y"] = 0 / 0})
  T.raises("cannot encode infinity", json.encode, math.huge)
  T.raises("cannot encode a table key of type boolean at %$%.t", json.encode, {t = {[true] = 1}})
  T.raises("cannot encode a thread", json.encode, coroutine.create(print))
  T.raises("cannot encode a userdata", json.encode, io.stdout)
  local c = {}
  c.self = c
  T.raises("nested deeper than 1000 levels %(a table that contains itself%?%) at %$%.self%.self%.self%.self%.%.%.%.self%.self%.self%.self%.self%.self$", json.encode, c)
  T.raises("bad argument", json.encode)
end)

T.test("pretty: two-space indent, sorted keys, stable", function()
  local v = {name = "run", tags = {}, list = {1, "two", {x = true}}, empty = json.array(), n = json.null}
  local want = [[
{
  "empty": [],
  "list": [
    1,
    "two",
    {
      "x": true
    }
  ],
  "n": null,
  "name": "run",
  "tags": {}
}]]
  T.eq(json.pretty(v), want)
  -- the same content built in another order gives the same text
  local w = {}
  for _, k in ipairs{"tags", "n", "name", "list", "empty"} do w[k] = v[k] end
  T.eq(json.pretty(w), want)
  T.eq(json.pretty(5), "5")
  T.eq(json.pretty({}), "{}")
  T.eq(json.decode(json.pretty(v)).list[3].x, true)
  T.raises("cannot encode a function", json.pretty, {f = print})
end)

-- random nested values (no NaN, no empty objects vs arrays ambiguity issues)
local function random_value(depth)
  local r = math.random(1, depth > 3 and 6 or 8)
  if r == 1 then return math.random(-1000000, 1000000) end
  if r == 2 then return math.random() * 10 ^ math.random(-20, 20) end
  if r == 3 then
    local t = {}
    for i = 1, math.random(0, 12) do t[i] = string.char(math.random(32, 126)) end
    return table.concat(t) .. (math.random(2) == 1 and "é\n\"" or "")
  end
  if r == 4 then return math.random(2) == 1 end
  if r == 5 then return json.null end
  if r == 6 then return math.random(math.mininteger, math.maxinteger) end
  if r == 7 then
    local t = json.array()
    for i = 1, math.random(0, 5) do t[i] = random_value(depth + 1) end
    return t
  end
  local t = {}
  for _ = 1, math.random(0, 5) do t["k" .. math.random(1, 20)] = random_value(depth + 1) end
  return t
end

T.test("encode then decode gives the same value (random values)", function()
  math.randomseed(42)
  for _ = 1, 300 do
    local v = random_value(0)
    T.eq(json.decode(json.encode(v)), v)
    T.eq(json.decode(json.pretty(v)), v)
    T.eq(json.encode(json.decode(json.encode(v))), json.encode(v))
  end
end)

T.test("decode_file and encode_file", T.with_temp_dir(function(d)
  local p = d .. "/out.json"
  T.eq(json.encode_file(p, {b = 1, a = {1, 2}}), true)
  T.eq(fs.read(p), '{"a":[1,2],"b":1}\n')
  T.eq(json.encode_file(p, {b = 1, a = {}}, {pretty = true}), true)
  T.eq(fs.read(p), '{\n  "a": {},\n  "b": 1\n}\n')
  T.eq(fs.list(d), {"out.json"})                  -- written through write_atomic: no temp left
  T.eq(json.decode_file(p), {a = {}, b = 1})
  T.eq(json.encode_file(p, {}, {mode = "600"}), true)
  T.eq(fs.stat(p).mode, tonumber("600", 8))
  local v, err = json.decode_file(d .. "/missing.json")
  T.eq(v, nil)
  T.match(tostring(err), "cannot read '.*/missing%.json'")
  fs.write(d .. "/bad.json", '{\n  "a": 1\n  "b": 2\n}')
  local v2, err2 = json.decode_file(d .. "/bad.json")
  T.eq(v2, nil)
  T.eq(err2.path, d .. "/bad.json")
  T.match(tostring(err2), "^.*/bad%.json: invalid JSON: expected ',' or '}' in an object at line 3, column 3")
  local ok, err3 = json.encode_file(d .. "/no/dir/x.json", {})
  T.eq(ok, nil)
  T.match(tostring(err3), "/no/dir")
  T.raises("cannot encode a function", json.encode_file, p, {print})
  T.eq(json.decode_file(p), {})                    -- the failed encode left the old file
end))

T.run()
