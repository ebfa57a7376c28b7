local T = require "runbox.testing"
local yaml = require "runbox.yaml"
local json = require "runbox.json"
local fs = require "runbox.fs"
local errors = require "runbox.errors"

-- the value of `v: <text>`
local function scalar(text)
  local t = assert(yaml.decode("v: " .. text))
  return t.v
end

T.test("plain scalars resolve by the YAML 1.2 core schema", function()
  local cases = {
    {"true", true}, {"True", true}, {"TRUE", true}, {"false", false}, {"FALSE", false},
    {"0", 0}, {"42", 42}, {"-17", -17}, {"+5", 5}, {"0x1F", 31}, {"0xff", 255}, {"0o17", 15},
    {"9223372036854775807", math.maxinteger}, {"-9223372036854775808", math.mininteger},
    {"1.5", 1.5}, {"-0.25", -0.25}, {".5", 0.5}, {"1.", 1.0}, {"1e3", 1000.0}, {"-1.5E-2", -0.015},
    {".inf", math.huge}, {"+.Inf", math.huge}, {"-.INF", -math.huge},
    {"yes", "yes"}, {"no", "no"}, {"on", "on"}, {"off", "off"}, {"y", "y"},
    {"0b101", "0b101"}, {"1_000", "1_000"}, {"0x", "0x"}, {"12:30", "12:30"}, {"1.2.3", "1.2.3"},
    {"[x]", {"x"}}, {"hello world", "hello world"}, {"e3", "e3"}, {".", "."}, {"+", "+"},
    {"2026-11-26", "2026-11-26"}, {"nulls", "nulls"}, {"Truee", "Truee"},
  }
  for _, c in ipairs(cases) do
    local got = scalar(c[1])
    T.eq(got, c[2], c[1])
    if math.type(c[2]) then T.eq(math.type(got), math.type(c[2]), c[1]) end
  end
  local nan = scalar(".nan")
  T.ok(nan ~= nan, ".nan is NaN")
  T.eq(math.type(scalar("99999999999999999999")), "float")
  T.eq(scalar("99999999999999999999"), 1e20)
  T.eq(math.type(scalar("0xffffffffffffffff")), "float")
end)

T.test("quoted scalars are always strings", function()
  T.eq(yaml.decode([[{a: "true", b: '1', c: "", d: '~', e: "null", f: "0x10", g: 'it''s', h: "tab\tx"}]]),
       {a = "true", b = "1", c = "", d = "~", e = "null", f = "0x10", g = "it's", h = "tab\tx"})
  T.eq(yaml.decode("a: |\n  line 1\n  line 2\nb: >\n  folded\n  text\n"),
       {a = "line 1\nline 2\n", b = "folded text\n"})
  T.eq(yaml.decode("a: |\n  12\n").a, "12\n")
end)

T.test("nulls: left out of mappings, yaml.null in sequences and for a whole document", function()
  local t = yaml.decode("a: ~\nb: null\nc:\nd: Null\ne: 1\nlist: [1, ~, null, 3]\nblock:\n  -\n  - 2\n")
  T.eq(t, {e = 1, list = {1, yaml.null, yaml.null, 3}, block = {yaml.null, 2}})
  T.eq(#t.list, 4)
  T.eq(yaml.null, json.null)
  T.eq(json.encode(t.list), "[1,null,null,3]")
  T.eq(yaml.decode(""), yaml.null)
  T.eq(yaml.decode("# only a comment\n"), yaml.null)
  T.eq(yaml.decode("~"), yaml.null)
  T.eq(yaml.decode("--- null\n"), yaml.null)
end)

T.test("nested block and flow collections", function()
  local doc = [[
name: oneshot
parallel:
  max: 8
  rate: 2.5
tasks:
  - id: t1
    tags: [a, b]
  - id: t2
    env: {KEY: value, N: 3}
empty_map: {}
empty_list: []
"quoted key": 1
200: ok
true: yes
]]
  T.eq(yaml.decode(doc), {
    name = "oneshot", parallel = {max = 8, rate = 2.5},
    tasks = {{id = "t1", tags = {"a", "b"}}, {id = "t2", env = {KEY = "value", N = 3}}},
    empty_map = {}, empty_list = {}, ["quoted key"] = 1, [200] = "ok", [true] = "yes"})
end)

T.test("anchors, aliases and merge keys", function()
  local t = yaml.decode([[
defaults: &d
  cpu: 2
  memory: 4096
  env: &e {A: 1}
small:
  <<: *d
  cpu: 1
both:
  <<: [*d, {gpu: T4, cpu: 8}]
  name: both
same_env: *e
scalar: &s hello
again: *s
]])
  T.eq(t.small, {cpu = 1, memory = 4096, env = {A = 1}})
  T.eq(t.both, {cpu = 2, memory = 4096, env = {A = 1}, gpu = "T4", name = "both"})   -- earlier sources win
  T.ok(rawequal(t.same_env, t.defaults.env), "an alias shares the anchored table")
  T.eq(t.again, "hello")
  local v, err = yaml.decode("a: &x 1\nb:\n  <<: *x\n")
  T.eq(v, nil)
  T.match(tostring(err), "a merge key '<<' needs a mapping or a list of mappings")
  T.eq(yaml.decode('"<<": 1'), {["<<"] = 1})   -- a quoted << is an ordinary key
end)

T.test("an alias bomb is refused quickly", function()
  local lines = {"a: &a [x, x, x, x, x, x, x, x, x, x]"}
  local prev = "a"
  for i = 1, 9 do
    local name = string.char(97 + i)
    local refs = {}
    for j = 1, 10 do refs[j] = "*" .. prev end
    lines[#lines + 1] = ("%s: &%s [%s]"):format(name, name, table.concat(refs, ", "))
    prev = name
  end
  local t0 = os.clock()
  local v, err = yaml.decode(table.concat(lines, "\n"))
  T.eq(v, nil)
  T.match(tostring(err), "more than 1000000 nodes through aliases %(an alias bomb%?%)")
  T.ok(os.clock() - t0 < 5, "took too long")
  -- a reasonable amount of reuse is fine
  T.eq(#yaml.decode("a: &a [1, 2, 3]\nb: [*a, *a, *a]").b, 3)
end)

local BAD = {
  {"a: [1, 2\n", 2, 1, "did not find expected ',' or ']' %(while parsing a flow sequence at line 1, column 4%)"},
  {"a: 1\na: 2\n", 2, 1, "duplicate key 'a'"},
  {"a:\n  b: 1\n  b: 2\n", 3, 3, "duplicate key 'b'"},
  {"? [1]\n: 2\n", 1, 3, "a mapping key must be a scalar, not a sequence"},
  {"{a: 1}: 2\n", 1, 1, "a mapping key must be a scalar, not a mapping"},
  {"x: &k [1]\n*k : 2\n", 2, 1, "a mapping key must be a scalar, not an alias of a collection"},
  {"~: 1\n", 1, 1, "a mapping key must not be null"},
  {"a: *nope\n", 1, 4, "alias '%*nope' refers to an undefined anchor"},
  {"a: &x [1, *x]\n", 1, 11, "alias '%*x' refers to a node that contains it"},
  {"a: b: c\n", 1, 5, "mapping values are not allowed in this context"},
  {"a:\n\t- 1\n", 2, 1, "found character that cannot start any token"},
  {"- a\nb: 1\n", 2, 1, "did not find expected '%-' indicator"},
  {"a: 'open\n", 2, 1, "found unexpected end of stream"},
  {"a: !!int abc\n", 1, 4, "the value does not match its tag '!!int'"},
  {"a: !!bool yes\n", 1, 4, "the value does not match its tag '!!bool'"},
  {"a: !custom x\n", 1, 4, "unsupported tag '!custom'"},
  {"a: !!set {x}\n", 1, 4, "unsupported tag 'tag:yaml.org,2002:set'"},
  {"a: !!binary aGk=\n", 1, 4, "unsupported tag '!!binary' on a scalar"},
}

T.test("bad YAML gives nil, err with line and column, never an error", function()
  for _, c in ipairs(BAD) do
    local ok, v, err = pcall(yaml.decode, c[1])
    T.ok(ok, "decode raised on " .. c[1])
    T.eq(v, nil, c[1])
    T.ok(errors.is(err, "yaml"), c[1])
    T.eq({err.line, err.column}, {c[2], c[3]}, "position for " .. c[1])
    T.match(tostring(err), ("^invalid YAML at line %d, column %d: "):format(c[2], c[3]) .. c[4], c[1])
  end
  local _, err = yaml.decode("a: \255\n")
  T.match(tostring(err), "^invalid YAML at byte 4: invalid leading UTF%-8 octet")
  T.raises("bad argument", yaml.decode, nil)
end)

T.test("deep nesting is an error, not a crash", function()
  local v, err = yaml.decode(("["):rep(5000) .. ("]"):rep(5000))
  T.eq(v, nil)
  T.match(tostring(err), "nested deeper than 512 levels")
  local v2, err2 = yaml.decode(("- "):rep(600) .. "x")
  T.eq(v2, nil)
  T.match(tostring(err2), "nested deeper")
  T.eq(#yaml.decode(("["):rep(500) .. ("]"):rep(500)), 1)
end)

T.test("explicit tags", function()
  T.eq(yaml.decode("a: !!str 12\nb: !!int '7'\nc: !!float 1\nd: !!bool 'true'\ne: !!null ''\nf: ! 12\ng: !!map {x: 1}\nh: !!seq [1]"),
       {a = "12", b = 7, c = 1.0, d = true, f = "12", g = {x = 1}, h = {1}})
  T.eq(math.type(yaml.decode("!!float 1")), "float")
end)

T.test("several documents: decode takes the first, decode_all all", function()
  local s = "--- 1\n--- [a]\n---\n...\n--- {k: v}\n"
  T.eq(yaml.decode(s), 1)
  T.eq(yaml.decode_all(s), {1, {"a"}, yaml.null, {k = "v"}})
  T.eq(yaml.decode_all(""), {})
  local v, err = yaml.decode("--- 1\n--- [\n")     -- an error in a later document still counts
  T.eq(v, nil)
  T.match(tostring(err), "line 3")
  local _, e2 = yaml.decode_all("--- &a 1\n--- *a\n")   -- anchors do not cross documents
  T.match(tostring(e2), "undefined anchor")
end)

T.test("decode_file names the file in errors", T.with_temp_dir(function(d)
  local p = d .. "/config.yaml"
  fs.write(p, "model: gpt\nmax_parallel: 4\n")
  T.eq(yaml.decode_file(p), {model = "gpt", max_parallel = 4})
  fs.write(p, "")
  T.eq(yaml.decode_file(p), yaml.null)
  local v, err = yaml.decode_file(d .. "/missing.yaml")
  T.eq(v, nil)
  T.match(tostring(err), "cannot read '.*/missing%.yaml': No such file")
  fs.write(p, "tasks:\n  - a\n - b\n")
  local v2, err2 = yaml.decode_file(p)
  T.eq(v2, nil)
  T.eq(err2.path, p)
  T.eq(err2.line, 3)
  T.match(tostring(err2), "^" .. p:gsub("%p", "%%%0") .. ": invalid YAML at line 3, column 2: did not find expected key")
end))

T.run()
