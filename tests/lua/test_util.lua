local T = require "runbox.testing"
local util = require "runbox.util"
local fs = require "runbox.fs"
local proc = require "runbox.proc"
local errors = require "runbox.errors"


local child = T.run_code

-- bytes i % 251 for i = 0 .. n-1 (the same data the expected digests were made from)
local function pattern(n)
  local t = {}
  for i = 0, n - 1 do t[#t + 1] = string.char(i % 251) end
  return table.concat(t)
end

T.test("sha256 of the FIPS 180 vectors", function()
  T.eq(util.sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  T.eq(util.sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  T.eq(util.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
  T.eq(util.sha256("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
  T.eq(util.sha256(("a"):rep(1000000)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
end)

T.test("sha256 around the 64-byte block and padding boundaries", function()
  local want = {
    [55] = "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59",
    [56] = "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562",
    [63] = "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488",
    [64] = "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108",
    [65] = "4bfd2c8b6f1eec7a2afeb48b934ee4b2694182027e6d0fc075074f2fabb31781",
    [119] = "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6",
    [120] = "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c",
    [127] = "92ca0fa6651ee2f97b884b7246a562fa71250fedefe5ebf270d31c546bfea976",
    [128] = "471fb943aa23c511f6f72f8d1652d9c880cfa392ad80503120547703e56a2be5",
    [1000] = "4e4c294b331f7a2099a379bec34b9f9fc03dc46ab465d998f4d683da53487e6d",
  }
  for n, hex in pairs(want) do T.eq(util.sha256(pattern(n)), hex, "length " .. n) end
  T.raises("bad argument", util.sha256, {})
end)

T.test("sha256_file streams a file and names a missing one", T.with_temp_dir(function(d)
  local data = pattern(1000) .. ("a"):rep(1000000)   -- several read chunks, odd split
  fs.write(d .. "/big", data)
  T.eq(util.sha256_file(d .. "/big"), util.sha256(data))
  fs.write(d .. "/empty", "")
  T.eq(util.sha256_file(d .. "/empty"), util.sha256(""))
  local r = proc.run{"sha256sum", d .. "/big"}
  T.eq(r.stdout:match("^%x+"), util.sha256(data))
  local v, err = util.sha256_file(d .. "/missing.bin")
  T.eq(v, nil)
  T.ok(errors.is(err, "fs"))
  T.eq(err.reason, "not_found")
  T.match(tostring(err), "cannot read '.*/missing%.bin': No such file")
end))

T.test("base64 RFC 4648 vectors", function()
  local vectors = {[""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
                   fooba = "Zm9vYmE=", foobar = "Zm9vYmFy"}
  for plain, enc in pairs(vectors) do
    T.eq(util.base64_encode(plain), enc)
    T.eq(util.base64_decode(enc), plain)
  end
  T.eq(util.base64_encode("\255\254\253"), "//79")
  T.eq(util.base64_encode("\251\255"), "+/8=")
end)

T.test("base64 round-trips binary data of every length", function()
  local all = {}
  for i = 0, 255 do all[#all + 1] = string.char(i) end
  all = table.concat(all)
  T.eq(util.base64_decode(util.base64_encode(all)), all)
  for n = 0, 70 do
    local s = util.base64_decode(util.base64_encode(all:sub(1, n)))
    T.eq(s, all:sub(1, n), "length " .. n)
  end
  math.randomseed(7)
  for _ = 1, 50 do
    local t = {}
    for i = 1, math.random(0, 3000) do t[i] = string.char(math.random(0, 255)) end
    local s = table.concat(t)
    T.eq(util.base64_decode(util.base64_encode(s)), s)
  end
end)

T.test("base64_decode skips line breaks and rejects bad input", function()
  T.eq(util.base64_decode("Zm9v\nYmFy\r\n"), "foobar")
  T.eq(util.base64_decode(" Zm9v YmE= "), "fooba")
  local bad = {
    ["Zm9v!"] = "a character outside the base64 alphabet at byte 5",
    ["Zm9"] = "not a multiple of 4",
    ["Z==="] = "misplaced '=' padding at byte 2",
    ["=m9v"] = "misplaced",
    ["Zg==Zg=="] = "data after '=' padding at byte 5",
    ["Zm9v-_"] = "outside the base64 alphabet",
    ["Zg=a"] = "data after",
    ["Zm9vYg"] = "missing '=' padding",
  }
  for input, why in pairs(bad) do
    local v, err = util.base64_decode(input)
    T.eq(v, nil, input)
    T.ok(errors.is(err, "base64"), input)
    T.match(tostring(err), why:gsub("%p", "%%%0"))
  end
  T.raises("bad argument", util.base64_decode, nil)
end)

T.test("uuid is version 4 and unique", function()
  local seen = {}
  for _ = 1, 1000 do
    local u = util.uuid()
    T.match(u, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$")
    T.eq(u, u:lower())
    T.ok(not seen[u], "duplicate uuid")
    seen[u] = true
  end
end)

T.test("random_hex gives n hex characters", function()
  for _, n in ipairs{0, 1, 2, 6, 7, 32, 1001} do
    local s = util.random_hex(n)
    T.eq(#s, n)
    T.ok(not s:find("[^0-9a-f]"), s)
  end
  T.ne(util.random_hex(32), util.random_hex(32))
  T.raises("between 0 and", util.random_hex, -1)
  T.raises("bad argument", util.random_hex, "x")
end)

T.test("clocks", function()
  local t = util.time()
  T.eq(math.type(t), "float")
  T.ok(math.abs(t - os.time()) < 2, "time is the wall clock")   -- os.time() truncates to seconds
  local a = util.monotonic()
  local b = util.monotonic()
  T.ok(b >= a, "monotonic never goes back")
  T.eq(util.iso8601(0), "1970-01-01T00:00:00Z")
  T.eq(util.iso8601(1795669123.9), "2026-11-26T04:58:43Z")
  T.eq(util.iso8601(951782400), "2000-02-29T00:00:00Z")
  T.match(util.iso8601(), "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$")
  T.raises("out of range", util.iso8601, 1e300)
  T.raises("out of range", util.iso8601, 0 / 0)
end)

T.test("run_id: UTC time plus a random suffix, never reused", function()
  local seen = {}
  for _ = 1, 20000 do   -- 24 random bits alone would repeat within this many
    local id = util.run_id()
    T.match(id, "^%d%d%d%d%d%d%d%d_%d%d%d%d%d%d_%x%x%x%x%x%x$")
    T.ok(not seen[id], "duplicate run id " .. id)
    seen[id] = true
  end
  -- os.date reads the coarse clock, run_id the precise one: a second of slack on each side
  local before = os.date("!%Y%m%d_%H%M%S", os.time() - 1)
  local id = util.run_id()
  local after = os.date("!%Y%m%d_%H%M%S", os.time() + 1)
  T.ok(before <= id:sub(1, 15) and id:sub(1, 15) <= after, "UTC time of day: " .. id)
end)

T.test("run_id(dir) claims a fresh folder", T.with_temp_dir(function(d)
  local id, path = util.run_id(d)
  T.match(id, "^%d+_%d+_%x+$")
  T.eq(path, d .. "/" .. id)
  T.eq(fs.stat(path).type, "dir")
  local ids = {}
  for _ = 1, 50 do ids[#ids + 1] = util.run_id(d) end
  T.eq(#fs.list(d), 51)
  local v, err = util.run_id(d .. "/missing")
  T.eq(v, nil)
  T.match(tostring(err), "cannot create run directory '.*/missing/")
end))

T.test("getenv, env, hostname, pid", function()
  T.eq(util.getenv("PATH"), os.getenv("PATH"))
  T.eq(util.getenv("RUNBOX_SURELY_UNSET_VARIABLE"), nil)
  local env = util.env()
  T.eq(env.PATH, os.getenv("PATH"))
  T.eq(type(env.HOME or env.PWD or ""), "string")
  local r = child([[for k, v in pairs(require("runbox.util").env()) do if k:match("^RB_T") then print(k, v) end end]],
                  {env = {RB_T1 = "a=b", RB_T2 = ""}})
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
  table.sort(lines)
  T.eq(lines, {"RB_T1\ta=b", "RB_T2\t"})
  T.eq(util.hostname(), (fs.read("/proc/sys/kernel/hostname"):gsub("\n$", "")))
  T.eq(util.pid(), tonumber(fs.readlink("/proc/self")))
end)

local DOTENV = [[
# a comment line

PLAIN=value
SPACED = spaced value   # comment after blanks
export EXPORTED=yes
EMPTY=
HASH=a#b
SINGLE='single $HOME \n # kept'
DOUBLE="line1\nline2\t\"quoted\" \\ \$HOME"
MULTI="first
second"
   INDENTED=ok
CRLF=windows
URL=https://example.com/?a=1&b=2
]]

T.test("load_dotenv parses every form and does not touch the environment", T.with_temp_dir(function(d)
  local p = d .. "/.env"
  fs.write(p, DOTENV:gsub("CRLF=windows\n", "CRLF=windows\r\n"))
  local vals = assert(util.load_dotenv(p))
  T.eq(vals, {
    PLAIN = "value", SPACED = "spaced value", EXPORTED = "yes", EMPTY = "", HASH = "a#b",
    SINGLE = "single $HOME \\n # kept", DOUBLE = "line1\nline2\t\"quoted\" \\ $HOME",
    MULTI = "first\nsecond", INDENTED = "ok", CRLF = "windows", URL = "https://example.com/?a=1&b=2"})
  T.eq(os.getenv("PLAIN"), nil)
  T.eq(util.getenv("EXPORTED"), nil)
end))

T.test("load_dotenv apply sets variables, keeping existing ones unless override", T.with_temp_dir(function(d)
  local p = d .. "/.env"
  fs.write(p, "RB_DOTENV_A=from-file\nPATH=/nowhere\n")
  local path = os.getenv("PATH")
  local vals = assert(util.load_dotenv(p, {apply = true}))
  T.eq(vals, {RB_DOTENV_A = "from-file", PATH = "/nowhere"})
  T.eq(os.getenv("RB_DOTENV_A"), "from-file")
  T.eq(os.getenv("PATH"), path)            -- existing variable kept
  fs.write(p, "RB_DOTENV_A=second\n")
  util.load_dotenv(p, {apply = true})
  T.eq(os.getenv("RB_DOTENV_A"), "from-file")
  util.load_dotenv(p, {apply = true, override = true})
  T.eq(os.getenv("RB_DOTENV_A"), "second")
  local r = assert(proc.run{"sh", "-c", "echo $RB_DOTENV_A"})   -- children see it too
  T.eq(r.stdout, "second\n")
end))

T.test("load_dotenv errors name the file and line, never the value", T.with_temp_dir(function(d)
  local v, err = util.load_dotenv(d .. "/missing.env")
  T.eq(v, nil)
  T.match(tostring(err), "cannot read '.*/missing%.env'")
  local cases = {
    {"A=1\nB='sekrit-value\n", 2, "unterminated single%-quoted value"},
    {"A=1\n\nC=\"sekrit-value\n\n", 3, "unterminated double%-quoted value"},
    {"just a line\n", 1, "expected '=' after the name"},
    {"=sekrit-value\n", 1, "expected KEY=VALUE"},
    {"KEY sekrit-value\n", 1, "expected '=' after the name"},
    {"K=\"sekrit-value\" trailing\n", 1, "unexpected text after the closing quote"},
    {"1BAD=sekrit-value\n", 1, "expected KEY=VALUE"},
    {"K=sekrit-value\0x\n", 1, "the value contains a NUL byte"},
  }
  for _, c in ipairs(cases) do
    fs.write(d .. "/.env", c[1])
    local ok, e = util.load_dotenv(d .. "/.env")
    T.eq(ok, nil, c[1])
    T.ok(errors.is(e, "dotenv"))
    T.eq(e.line, c[2])
    T.match(tostring(e), "^" .. (d .. "/.env"):gsub("%p", "%%%0") .. ":" .. c[2] .. ": " .. c[3])
    T.ok(not tostring(e):find("sekrit"), "the value leaked into the message")
  end
  T.raises("bad argument", util.load_dotenv, d .. "/.env", "apply")
end))

T.run()
