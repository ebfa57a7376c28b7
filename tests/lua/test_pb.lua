-- runbox.pb: the protobuf wire codec. Golden bytes come from the protobuf encoding documentation
-- (worked out byte by byte in the comments) and from the reference implementation itself at test
-- time (/usr/bin/python3 with Debian's python3-protobuf, listed in tests/deps-packages.txt).
local T = require "runbox.testing"
local pb = require "runbox.pb"
local errors = require "runbox.errors"

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
local function unhex(h) return (h:gsub("%s", ""):gsub("..", function(x) return string.char(tonumber(x, 16)) end)) end

-- The schema of the brief, plus messages for edge cases. Kept as a plain table so that the python
-- cross-check below can describe the same schema to protobuf.
local defs = {
  Kind = pb.enum{KIND_UNSPECIFIED = 0, KIND_A = 1, KIND_B = 2},
  Tag = {{1, "key", "string"}, {2, "value", "string"}},
  Sandbox = {
    {1, "image_id", "string"},
    {2, "cpu", "uint32"},
    {3, "tags", "Tag", repeated = true},
    {4, "env", "map", key = "string", value = "string"},
    {5, "timeout", "uint32", optional = true},
    {6, "kind", "Kind"},
    {7, "name", "string", oneof = "choice"},
    {8, "id", "uint64", oneof = "choice"},
    {9, "ids", "int64", repeated = true},
    {10, "data", "bytes"}, {11, "ratio", "double"}, {12, "f", "float"}, {13, "ok", "bool"},
    {14, "s", "sint64"}, {15, "x", "fixed32"}, {16, "y", "sfixed64"}, {17, "z", "fixed64"},
    {18, "w", "sfixed32"}, {19, "i32", "int32"}, {20, "s32", "sint32"},
  },
  -- every scalar type, plain and repeated (packed)
  Scalars = {
    {1, "d", "double"}, {2, "f", "float"}, {3, "i64", "int64"}, {4, "u64", "uint64"},
    {5, "i32", "int32"}, {6, "u32", "uint32"}, {7, "s32", "sint32"}, {8, "s64", "sint64"},
    {9, "fx32", "fixed32"}, {10, "fx64", "fixed64"}, {11, "sf32", "sfixed32"}, {12, "sf64", "sfixed64"},
    {13, "b", "bool"}, {14, "str", "string"}, {15, "by", "bytes"}, {16, "k", "Kind"},
    {21, "rd", "double", repeated = true}, {22, "rf", "float", repeated = true},
    {23, "ri64", "int64", repeated = true}, {24, "ru64", "uint64", repeated = true},
    {25, "ri32", "int32", repeated = true}, {26, "ru32", "uint32", repeated = true},
    {27, "rs32", "sint32", repeated = true}, {28, "rs64", "sint64", repeated = true},
    {29, "rfx32", "fixed32", repeated = true}, {30, "rfx64", "fixed64", repeated = true},
    {31, "rsf32", "sfixed32", repeated = true}, {32, "rsf64", "sfixed64", repeated = true},
    {33, "rb", "bool", repeated = true}, {34, "rstr", "string", repeated = true},
    {35, "rby", "bytes", repeated = true}, {36, "rk", "Kind", repeated = true},
  },
  -- presence: optional scalars of each kind
  Opt = {
    {1, "i", "int32", optional = true}, {2, "s", "string", optional = true},
    {3, "b", "bool", optional = true}, {4, "d", "double", optional = true},
    {5, "k", "Kind", optional = true}, {6, "plain", "int32"}, {7, "t", "Tag", optional = true},
  },
  -- recursion, maps of every key kind, message values, oneof with a message member
  Node = {
    {1, "name", "string"},
    {2, "child", "Node"},
    {3, "children", "Node", repeated = true},
    {4, "by_name", "map", key = "string", value = "Node"},
    {5, "by_id", "map", key = "int32", value = "Tag"},
    {6, "kinds", "map", key = "string", value = "Kind"},
    {7, "flags", "map", key = "bool", value = "bytes"},
    {8, "big", "map", key = "uint64", value = "sint64"},
    {9, "fx", "map", key = "sfixed32", value = "double"},
    {10, "text", "string", oneof = "body"},
    {11, "tag", "Tag", oneof = "body"},
    {12, "num", "sint32", oneof = "body"},
    {1000, "far", "int32"},
    {536870911, "last", "int32"},
  },
  Empty = {},
}
local S = pb.schema(defs)

local MAXI, MINI = math.maxinteger, math.mininteger
local I32MAX, I32MIN = 2147483647, -2147483648

T.test("golden bytes from the protobuf encoding documentation", function()
  local G = pb.schema{
    Test1 = {{1, "a", "int32"}},
    Test2 = {{2, "b", "string"}},
    Test3 = {{3, "c", "Test1"}},
    Test4 = {{4, "d", "int32", repeated = true}},
  }
  -- 150 = 0b10010110: low 7 bits 0x16 with the continuation bit (0x96), then 150 >> 7 = 1
  T.eq(hex(pb.encode(G.Test1, {a = 150})), "089601")
  -- tag (2 << 3 | 2) = 0x12, length 7, the bytes
  T.eq(pb.encode(G.Test2, {b = "testing"}), "\x12\x07testing")
  -- tag (3 << 3 | 2) = 0x1a, length 3, the embedded Test1
  T.eq(hex(pb.encode(G.Test3, {c = {a = 150}})), "1a03089601")
  -- packed: tag 0x22, length 6, varints 3 (03), 270 (8e 02), 86942 (9e a7 05)
  T.eq(hex(pb.encode(G.Test4, {d = {3, 270, 86942}})), "2206038e029ea705")
  T.eq(pb.decode(G.Test1, unhex"089601").a, 150)
  T.eq(pb.decode(G.Test3, unhex"1a03089601").c.a, 150)
  T.eq(pb.decode(G.Test4, unhex"2206038e029ea705").d, {3, 270, 86942})
end)

T.test("golden bytes of each scalar encoding", function()
  local function one(field, value) return hex(pb.encode(S.Scalars, {[field] = value})) end
  -- int32 -1 is sign-extended to 64 bits: ten bytes, nine 0xff and a final 0x01
  T.eq(one("i32", -1), "28ffffffffffffffffff01")
  T.eq(one("i32", I32MIN), "2880808080f8ffffffff01")
  T.eq(one("i32", I32MAX), "28ffffffff07")
  -- int64 min: 2^63 as a varint, 0x80 x9 then 0x01
  T.eq(one("i64", MINI), "18808080808080808080" .. "01")
  -- uint64 2^64-1 is -1 in Lua
  T.eq(one("u64", -1), "20ffffffffffffffffff01")
  T.eq(one("u32", 4294967295), "30ffffffff0f")
  -- zigzag: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3; int32 min -> 2^32 - 1
  T.eq(one("s32", -1), "3801")
  T.eq(one("s32", 1), "3802")
  T.eq(one("s32", -2), "3803")
  T.eq(one("s32", I32MIN), "38ffffffff0f")
  T.eq(one("s32", I32MAX), "38feffffff0f")
  T.eq(one("s64", MINI), "40ffffffffffffffffff01")
  T.eq(one("s64", MAXI), "40feffffffffffffffff01")
  -- fixed sizes, little-endian; wire type 5 (32-bit) or 1 (64-bit)
  T.eq(one("fx32", 1), "4d01000000")
  T.eq(one("fx64", -1), "51ffffffffffffffff")
  T.eq(one("sf32", -2), "5dfeffffff")
  T.eq(one("sf64", MINI), "610000000000000080")
  -- 1.0 as a double is 0x3ff0000000000000, as a float 0x3f800000
  T.eq(one("d", 1.0), "09000000000000f03f")
  T.eq(one("f", 1.0), "150000803f")
  T.eq(one("f", -2.5), "15000020c0")
  T.eq(one("b", true), "6801")
  T.eq(one("str", "hi"), "72026869")
  T.eq(one("by", "\0\255"), "7a0200ff")
  T.eq(one("k", "KIND_B"), "8001" .. "02")   -- field 16: tag 128 is two bytes
  T.eq(one("k", 2), "800102")
  T.eq(one("k", -1), "8001ffffffffffffffffff01")
  -- defaults are not written (proto3 implicit presence)
  for _, f in ipairs{"i64", "u64", "i32", "u32", "s32", "s64", "fx32", "fx64", "sf32", "sf64"} do
    T.eq(one(f, 0), "", f)
  end
  T.eq(one("d", 0.0), "")
  T.eq(one("f", 0), "")
  T.eq(one("b", false), "")
  T.eq(one("str", ""), "")
  T.eq(one("by", ""), "")
  T.eq(one("k", "KIND_UNSPECIFIED"), "")
  T.eq(one("k", 0), "")
  -- -0.0 is not the default bit pattern: written, as protobuf does
  T.eq(one("d", -0.0), "090000000000000080")
  -- large field numbers: tag of 536870911 with wire type 0
  T.eq(hex(pb.encode(S.Node, {last = 1})), "f8ffffff0f01")
  T.eq(hex(pb.encode(S.Node, {far = 1})), "c03e01")
end)

T.test("round trip of every scalar type at edge values", function()
  local values = {
    d = {1.5, -1e308, 5e-324, math.huge, -math.huge, MAXI + 0.0},
    f = {0.5, -1.25, 3.4028234663852886e38, 1.401298464324817e-45, math.huge, -math.huge},
    i64 = {1, -1, MAXI, MINI}, u64 = {1, -1, MAXI, MINI},
    i32 = {1, -1, I32MAX, I32MIN}, u32 = {1, 4294967295},
    s32 = {1, -1, I32MAX, I32MIN}, s64 = {1, -1, MAXI, MINI},
    fx32 = {1, 4294967295}, fx64 = {1, -1, MAXI, MINI},
    sf32 = {1, -1, I32MAX, I32MIN}, sf64 = {1, -1, MAXI, MINI},
    b = {true}, str = {"x", "héllo"}, by = {"\0", "\0\1\2\255", ("\0\255"):rep(1000)},
    k = {"KIND_A", "KIND_B"},
  }
  for field, list in pairs(values) do
    for _, v in ipairs(list) do
      local got = pb.decode(S.Scalars, pb.encode(S.Scalars, {[field] = v}))
      T.eq(got[field], v, field)
      T.eq(math.type(got[field]), math.type(v), field .. " keeps its number type")
    end
  end
  -- every byte value survives in bytes and string fields
  local all = {}
  for i = 0, 255 do all[#all + 1] = string.char(i) end
  all = table.concat(all)
  T.eq(pb.decode(S.Scalars, pb.encode(S.Scalars, {by = all, str = all})).by, all)
  -- NaN: not equal to itself, so checked by property
  for _, field in ipairs{"d", "f"} do
    local got = pb.decode(S.Scalars, pb.encode(S.Scalars, {[field] = 0 / 0}))[field]
    T.ok(got ~= got, field .. " NaN")
  end
  -- -0.0 keeps its sign
  T.eq(1 / pb.decode(S.Scalars, pb.encode(S.Scalars, {d = -0.0})).d, -math.huge)
  -- floats that are integers in Lua still encode for float fields, integers for double fields
  T.eq(pb.decode(S.Scalars, pb.encode(S.Scalars, {d = 3})).d, 3.0)
  -- integral floats are accepted for integer fields
  T.eq(pb.decode(S.Scalars, pb.encode(S.Scalars, {i32 = 7.0})).i32, 7)
end)

T.test("round trip of repeated fields of every type", function()
  local msg = {
    rd = {0.0, 1.5, -2.25, math.huge}, rf = {0.0, 0.5, -1.5},
    ri64 = {0, 1, -1, MAXI, MINI}, ru64 = {0, 1, -1}, ri32 = {0, -1, I32MAX, I32MIN},
    ru32 = {0, 4294967295}, rs32 = {0, -1, 1, I32MIN}, rs64 = {0, MINI, MAXI},
    rfx32 = {0, 4294967295}, rfx64 = {0, -1}, rsf32 = {I32MIN, 0}, rsf64 = {MINI, 0},
    rb = {true, false, true}, rstr = {"", "a", ""}, rby = {"\0", ""},
    rk = {"KIND_A", "KIND_UNSPECIFIED", 7},
  }
  local got = pb.decode(S.Scalars, pb.encode(S.Scalars, msg))
  for k, v in pairs(msg) do T.eq(got[k], v, k) end
  -- repeated strings keep empty elements: three elements, each tag + length
  T.eq(hex(pb.encode(S.Scalars, {rstr = {"", "a", ""}})), "9202009202016192" .. "0200")
end)

T.test("decode fills proto3 defaults", function()
  local m = pb.decode(S.Sandbox, "")
  T.eq(m, {image_id = "", cpu = 0, tags = {}, env = {}, kind = "KIND_UNSPECIFIED", ids = {},
           data = "", ratio = 0.0, f = 0.0, ok = false, s = 0, x = 0, y = 0, z = 0, w = 0, i32 = 0, s32 = 0})
  T.eq(math.type(m.ratio), "float")
  T.eq(math.type(m.cpu), "integer")
  T.eq(m.timeout, nil)
  T.eq(m.choice, nil)
  local n = pb.decode(S.Node, "")
  T.eq(n.child, nil)
  T.eq(n.children, {})
  T.eq(n.by_name, {})
  T.eq(pb.decode(S.Empty, ""), {})
  -- an enum without a 0 value defaults to the number 0
  local E = pb.schema{E = pb.enum{ONE = 1}, M = {{1, "e", "E"}}}
  T.eq(pb.decode(E.M, "").e, 0)
end)

T.test("optional fields have presence: a set 0 is written, nil is not", function()
  T.eq(hex(pb.encode(S.Sandbox, {timeout = 0})), "2800")
  T.eq(hex(pb.encode(S.Sandbox, {cpu = 0})), "")
  T.eq(pb.decode(S.Sandbox, unhex"2800").timeout, 0)
  T.eq(pb.decode(S.Sandbox, "").timeout, nil)
  local all = {i = 0, s = "", b = false, d = 0.0, k = "KIND_UNSPECIFIED", plain = 0, t = {}}
  local bytes = pb.encode(S.Opt, all)
  T.eq(hex(bytes), "0800" .. "1200" .. "1800" .. "210000000000000000" .. "2800" .. "3a00")
  local got = pb.decode(S.Opt, bytes)
  all.t = {key = "", value = ""}
  T.eq(got, all)
  T.eq(pb.decode(S.Opt, ""), {plain = 0})
end)

T.test("oneof: presence, the member name, last one wins", function()
  local b = pb.encode(S.Sandbox, {name = ""})
  T.eq(hex(b), "3a00")                                  -- a oneof member is written even when empty
  local m = pb.decode(S.Sandbox, b)
  T.eq(m.name, "")
  T.eq(m.choice, "name")
  T.eq(m.id, nil)
  m = pb.decode(S.Sandbox, pb.encode(S.Sandbox, {id = 0}))
  T.eq(m.id, 0)
  T.eq(m.choice, "id")
  T.eq(m.name, nil)
  -- both on the wire: the last one wins and the other is cleared
  m = pb.decode(S.Sandbox, pb.encode(S.Sandbox, {name = "a"}) .. pb.encode(S.Sandbox, {id = 5}))
  T.eq({m.choice, m.name, m.id}, {"id", nil, 5})
  m = pb.decode(S.Sandbox, pb.encode(S.Sandbox, {id = 5}) .. pb.encode(S.Sandbox, {name = "a"}))
  T.eq({m.choice, m.name, m.id}, {"name", "a", nil})
  -- two members set in Lua: the oneof name says which one to send
  T.eq(hex(pb.encode(S.Sandbox, {name = "a", id = 5, choice = "id"})), "4005")
  T.eq(hex(pb.encode(S.Sandbox, {name = "a", id = 5, choice = "name"})), "3a0161")
  T.raises("^Sandbox.name: oneof choice has more than one member set", pb.encode, S.Sandbox, {name = "a", id = 5})
  T.raises("oneof choice has more than one member set", pb.encode, S.Sandbox, {name = "a", id = 5, choice = "nope"})
  -- a stale choice with a single member set is ignored
  T.eq(hex(pb.encode(S.Sandbox, {id = 5, choice = "name"})), "4005")
  -- a message member; a message member seen twice is merged
  local n = pb.decode(S.Node, pb.encode(S.Node, {tag = {key = "k"}}) .. pb.encode(S.Node, {tag = {value = "v"}}))
  T.eq(n.body, "tag")
  T.eq(n.tag, {key = "k", value = "v"})
  n = pb.decode(S.Node, pb.encode(S.Node, {tag = {key = "k"}}) .. pb.encode(S.Node, {num = -3}))
  T.eq({n.body, n.tag, n.num}, {"num", nil, -3})
end)

T.test("maps: string, integer and bool keys, message and enum values", function()
  local msg = {
    by_name = {a = {name = "A", child = {name = "AA"}}, [""] = {}},
    by_id = {[1] = {key = "k"}, [-5] = {}, [I32MAX] = {value = "v"}},
    kinds = {x = "KIND_A", y = "KIND_UNSPECIFIED", z = 9},
    flags = {[true] = "\0yes", [false] = ""},
    big = {[-1] = MINI, [0] = 1},
    fx = {[I32MIN] = 0.5},
  }
  local got = pb.decode(S.Node, pb.encode(S.Node, msg))
  T.eq(got.by_name.a.name, "A")
  T.eq(got.by_name.a.child.name, "AA")
  T.eq(got.by_name[""].name, "")                            -- message values get their defaults
  T.eq(got.by_name[""].children, {})
  T.eq(got.by_id[1], {key = "k", value = ""})
  T.eq(got.by_id[-5], {key = "", value = ""})
  T.eq(got.by_id[I32MAX], {key = "", value = "v"})
  T.eq(got.kinds, msg.kinds)
  T.eq(got.flags, msg.flags)
  T.eq(got.big, msg.big)
  T.eq(got.fx, msg.fx)
  -- one entry: tag 0x22, length, key (0a) and value (12) always written, even when default
  T.eq(hex(pb.encode(S.Sandbox, {env = {A = "1"}})), "2206" .. "0a0141" .. "120131")
  T.eq(hex(pb.encode(S.Sandbox, {env = {[""] = ""}})), "2204" .. "0a00" .. "1200")
  -- entries missing their key or value decode to the defaults; a repeated key: the last one wins
  T.eq(pb.decode(S.Sandbox, unhex"2203120178").env, {[""] = "x"})
  T.eq(pb.decode(S.Sandbox, unhex"22030a0141").env, {A = ""})
  T.eq(pb.decode(S.Sandbox, unhex"2200").env, {[""] = ""})
  T.eq(pb.decode(S.Sandbox, unhex"22060a014112013122060a0141120132").env, {A = "2"})
  T.eq(pb.decode(S.Node, unhex"2a020801").by_id, {[1] = {key = "", value = ""}})
  -- unknown fields inside an entry are skipped
  T.eq(pb.decode(S.Sandbox, unhex("22080a0141" .. "1805" .. "120131")).env, {A = "1"})
end)

T.test("repeated numbers: packed on encode, packed and unpacked accepted on decode", function()
  -- field 9 (int64): packed tag 0x4a
  T.eq(hex(pb.encode(S.Sandbox, {ids = {1, 2, 300}})), "4a04" .. "0102ac02")
  T.eq(hex(pb.encode(S.Sandbox, {ids = {}})), "")
  -- unpacked: one tag (0x48) per element
  T.eq(pb.decode(S.Sandbox, unhex("4801" .. "4802" .. "48ac02")).ids, {1, 2, 300})
  -- both forms mixed, and two packed runs, append in order
  T.eq(pb.decode(S.Sandbox, unhex("4a020102" .. "4803" .. "4a0104")).ids, {1, 2, 3, 4})
  T.eq(pb.decode(S.Sandbox, unhex"4a00").ids, {})
  -- packed fixed-size and enum elements
  T.eq(hex(pb.encode(S.Scalars, {rfx32 = {1, 2}})), "ea0108" .. "0100000002000000")
  T.eq(pb.decode(S.Scalars, unhex("ed0101000000" .. "ea010402000000")).rfx32, {1, 2})
  T.eq(pb.decode(S.Scalars, unhex"a20203010203").rk, {"KIND_A", "KIND_B", 3})
  T.eq(pb.decode(S.Scalars, unhex"8a02020100").rb, {true, false})
  -- repeated messages and strings are never packed
  T.eq(hex(pb.encode(S.Sandbox, {tags = {{key = "a"}, {}}})), "1a030a0161" .. "1a00")
  T.eq(pb.decode(S.Sandbox, unhex"1a030a01611a00").tags, {{key = "a", value = ""}, {key = "", value = ""}})
end)

T.test("unknown fields of every wire type are skipped", function()
  local unknown = table.concat{
    "f807" .. "96ab01",                         -- field 127 varint
    "f907" .. "0102030405060708",               -- field 127 64-bit
    "fa07" .. "03" .. "616263",                 -- field 127 length-delimited
    "fd07" .. "01020304",                       -- field 127 32-bit
    "fb07" .. "0801" .. "1b" .. "1001" .. "1c" .. "fc07",   -- group 127 holding a varint and group 3
    "a306" .. "a406",                           -- empty group 100
    "08" .. "05",                               -- field 1 with the wrong wire type (string expected)
  }
  local m = pb.decode(S.Sandbox, unhex(unknown) .. unhex"1002" .. unhex(unknown) .. unhex"3a0178")
  T.eq(m.cpu, 2)
  T.eq(m.name, "x")
  T.eq(m.image_id, "")
  -- inside nested messages too
  local n = pb.decode(S.Node, unhex("12" .. ("%02x"):format(#unhex(unknown) + 3) .. unknown .. "0a0161"))
  T.eq(n.child.name, "a")
end)

T.test("enums: names, unknown numbers, unknown names", function()
  T.eq(pb.decode(S.Sandbox, pb.encode(S.Sandbox, {kind = "KIND_B"})).kind, "KIND_B")
  T.eq(pb.decode(S.Sandbox, pb.encode(S.Sandbox, {kind = 1})).kind, "KIND_A")
  T.eq(pb.decode(S.Sandbox, pb.encode(S.Sandbox, {kind = 42})).kind, 42)
  T.eq(pb.decode(S.Sandbox, pb.encode(S.Sandbox, {kind = -7})).kind, -7)
  T.raises('Sandbox.kind: unknown Kind value "KIND_C"', pb.encode, S.Sandbox, {kind = "KIND_C"})
  T.raises("Sandbox.kind: expected Kind name or number, got boolean", pb.encode, S.Sandbox, {kind = true})
  T.raises("out of range", pb.encode, S.Sandbox, {kind = 2^40 // 1})
  T.eq(S.Kind, {KIND_UNSPECIFIED = 0, KIND_A = 1, KIND_B = 2})
  S.Kind.KIND_A = 99       -- S.Kind is a copy: changing it does not change the codec
  T.eq(pb.decode(S.Sandbox, unhex"3001").kind, "KIND_A")
  S.Kind.KIND_A = 1
end)

T.test("messages: nesting, recursion, merging, long bodies", function()
  local deep = {name = "0"}
  local cur = deep
  for i = 1, 50 do cur.child = {name = tostring(i), children = {{name = "c" .. i}}}; cur = cur.child end
  local got = pb.decode(S.Node, pb.encode(S.Node, deep))
  for i = 1, 50 do got = got.child; T.eq(got.name, tostring(i)); T.eq(got.children[1].name, "c" .. i) end
  T.eq(got.child, nil)
  -- an empty sub-message is present (written as tag + 0 length)
  T.eq(hex(pb.encode(S.Node, {child = {}})), "1200")
  T.eq(pb.decode(S.Node, unhex"1200").child.name, "")
  -- a singular message field seen twice merges: scalars replaced, lists appended
  local a = pb.encode(S.Node, {child = {name = "a", children = {{name = "1"}}}})
  local b = pb.encode(S.Node, {child = {text = "t", children = {{name = "2"}}}})
  local m = pb.decode(S.Node, a .. b)
  T.eq(m.child.name, "a")
  T.eq(m.child.text, "t")
  T.eq(#m.child.children, 2)
  -- bodies whose length needs 2 and 3 varint bytes
  for _, n in ipairs{127, 128, 300, 16383, 16384, 70000} do
    local s = ("x"):rep(n)
    local enc = pb.encode(S.Node, {child = {name = s}})
    T.eq(pb.decode(S.Node, enc).child.name, s)
  end
  T.eq(hex(pb.encode(S.Node, {child = {name = ("x"):rep(126)}})):sub(1, 10), "1280010a7e")
end)

T.test("encode errors name the message and the field", function()
  T.raises("^Sandbox.cpu: expected integer, got string$", pb.encode, S.Sandbox, {cpu = "2"})
  T.raises("^Sandbox.cpu: expected integer, got 1.5$", pb.encode, S.Sandbox, {cpu = 1.5})
  T.raises("^Sandbox.cpu: %-1 is out of range for uint32$", pb.encode, S.Sandbox, {cpu = -1})
  T.raises("^Sandbox.cpu: 4294967296 is out of range for uint32$", pb.encode, S.Sandbox, {cpu = 4294967296})
  T.raises("^Sandbox.i32: 2147483648 is out of range for int32$", pb.encode, S.Sandbox, {i32 = 2147483648})
  T.raises("^Sandbox.s: expected integer, got 1e%+20$", pb.encode, S.Sandbox, {s = 1e20})
  T.raises("^Sandbox.image_id: expected string, got number$", pb.encode, S.Sandbox, {image_id = 1})
  T.raises("^Sandbox.ok: expected boolean, got number$", pb.encode, S.Sandbox, {ok = 1})
  T.raises("^Sandbox.ratio: expected number, got string$", pb.encode, S.Sandbox, {ratio = "1"})
  T.raises("^Sandbox.tags: expected table %(a list%), got string$", pb.encode, S.Sandbox, {tags = "a"})
  T.raises("^Sandbox.tags: expected a list", pb.encode, S.Sandbox, {tags = {key = "a"}})
  T.raises("^Sandbox.tags%[2%]: expected table %(a Tag message%), got string$", pb.encode, S.Sandbox, {tags = {{}, "x"}})
  T.raises("^Sandbox.tags%[1%].key: expected string, got boolean$", pb.encode, S.Sandbox, {tags = {{key = true}}})
  T.raises("^Sandbox.ids%[3%]: expected integer, got string$", pb.encode, S.Sandbox, {ids = {1, 2, "3"}})
  T.raises('^Sandbox.env%["A"%]: expected string, got number$', pb.encode, S.Sandbox, {env = {A = 1}})
  T.raises("^Sandbox.env %(map key 1%): expected string, got number$", pb.encode, S.Sandbox, {env = {"x"}})
  T.raises("^Node.by_id %(map key a%): expected integer, got string$", pb.encode, S.Node, {by_id = {a = {}}})
  T.raises("^Node.by_name%[\"a\"%].child.name: expected string", pb.encode, S.Node, {by_name = {a = {child = {name = 1}}}})
  T.raises("^Sandbox.env: expected table %(a map%), got string$", pb.encode, S.Sandbox, {env = "A=1"})
  T.raises("^Node.child: expected table %(a Node message%), got boolean$", pb.encode, S.Node, {child = true})
  -- a table that contains itself
  local loop = {name = "x"}
  loop.child = loop
  T.raises("nested deeper than 100 levels", pb.encode, S.Node, loop)
  -- bad arguments
  T.raises("bad argument #1", pb.encode, {}, {})
  T.raises("bad argument #2", pb.encode, S.Node, "x")
  T.raises("bad argument #2", pb.decode, S.Node, {})
  -- keys that are not fields are ignored
  T.eq(pb.encode(S.Tag, {key = "a", other = 1}), pb.encode(S.Tag, {key = "a"}))
end)

T.test("malformed input: nil and an error naming the message, never a crash", function()
  local cases = {
    {"08", "Sandbox: truncated varint %(field 1%)"},          -- wrong wire type for image_id: skipped, truncated
    {"10", "Sandbox.cpu: truncated varint"},
    {"1080", "Sandbox.cpu: truncated varint"},
    {"10ffffffffffffffffffff01", "Sandbox.cpu: varint longer than 10 bytes"},
    {"80", "Sandbox: truncated varint %(tag%)"},
    {"ffffffffffffffffffff01", "Sandbox: varint longer than 10 bytes %(tag%)"},
    {"8080808080", "Sandbox: truncated varint %(tag%)"},
    {"f8ffffff1f01", "Sandbox: field number too large"},
    {"00", "Sandbox: field number 0"},
    {"0001", "Sandbox: field number 0"},
    {"0a05616263", "Sandbox.image_id: length 5 goes past the end of the input %(3 bytes left%)"},
    {"0affffffffffffffffff01", "Sandbox.image_id: length"},
    {"0a80", "Sandbox.image_id: truncated varint %(length%)"},
    {"1a050a0561", "Sandbox.tags: length 5 goes past the end"},
    {"1a030a0561", "Sandbox.tags.key: length 5 goes past the end"},
    {"1a0100", "Sandbox.tags: field number 0"},
    {"1a0108", "Sandbox.tags: truncated varint %(field 1%)"},
    {"7d0100", "Sandbox.x: truncated 4%-byte value"},
    {"5d0100", "Sandbox: truncated 4%-byte value"},      -- ratio is a double: another wire type, skipped,
    {"59010203", "Sandbox.ratio: truncated 8%-byte value"},
    {"f907", "Sandbox: truncated 8%-byte value"},
    {"fd0701", "Sandbox: truncated 4%-byte value"},
    {"0e", "Sandbox: invalid wire type 6 %(field 1%)"},
    {"0f", "Sandbox: invalid wire type 7 %(field 1%)"},
    {"0c", "Sandbox: unexpected end%-group tag %(field 1%)"},
    {"0b", "Sandbox: unterminated group %(field 1%)"},
    {"0b0801", "Sandbox: unterminated group %(field 1%)"},
    {"0b14", "Sandbox: end%-group tag of field 2 inside group field 1"},
    {"0b0f0c", "Sandbox: invalid wire type 7 %(field 1%)"},
    {"0b00", "Sandbox: field number 0"},
    {("0b"):rep(200), "groups nested deeper than 100 levels"},
    {"4a02" .. "0180", "Sandbox.ids: truncated varint"},
    {"4a0a" .. "ffffffffffffffffffff", "Sandbox.ids: varint longer than 10 bytes"},
    {"2203" .. "0a0561", "Sandbox.env: length 5 goes past the end"},
    {"2202" .. "0000", "Sandbox.env: field number 0 in a map entry"},
    {"2201" .. "0a", "Sandbox.env: truncated varint %(length%)"},
    {"2201" .. "0e", "Sandbox.env: invalid wire type 6"},
  }
  for _, c in ipairs(cases) do
    local m, err = pb.decode(S.Sandbox, unhex(c[1]))
    T.eq(m, nil, c[1])
    T.ok(errors.is(err, "pb"), "an errors object with code pb for " .. c[1])
    T.match(errors.message(err), c[2], c[1])
  end
  -- nested messages: the path names each field
  local _, err = pb.decode(S.Node, unhex("12041202" .. "0a05"))
  T.match(tostring(err), "^Node.child.child.name: length 5 goes past the end of the input %(0 bytes left%) %(at byte 5%)$")
  _, err = pb.decode(S.Node, unhex("2205" .. "0a0161" .. "1201"))
  T.match(tostring(err), "^Node.by_name: length 1 goes past the end")
  _, err = pb.decode(S.Node, unhex("2207" .. "0a0161" .. "1202" .. "0a05"))
  T.match(tostring(err), "^Node.by_name.name: length 5 goes past")
end)

T.test("nesting depth is limited to 100 messages", function()
  local function nest(n)        -- n levels of Node.child around an empty Node
    local s = ""
    for _ = 1, n do s = "\x12" .. string.char(#s) .. s end   -- keeps lengths < 128 for small n
    return s
  end
  local function nest_long(n)   -- lengths may need two varint bytes
    local s = ""
    for _ = 1, n do
      local len = #s
      local v = len < 128 and string.char(len) or string.char(len % 128 + 128, len // 128)
      s = "\x12" .. v .. s
    end
    return s
  end
  T.ok(pb.decode(S.Node, nest(60)))
  local m = T.ok(pb.decode(S.Node, nest_long(99)))    -- the root plus 99 levels: 100 messages
  local depth = 0
  while m.child do m = m.child; depth = depth + 1 end
  T.eq(depth, 99)
  local bad, err = pb.decode(S.Node, nest_long(100))
  T.eq(bad, nil)
  T.match(tostring(err), "messages nested deeper than 100 levels")
  T.match(tostring(err), "^Node.child.child")
  bad, err = pb.decode(S.Node, nest_long(3000))
  T.eq(bad, nil)
  T.match(tostring(err), "nested deeper")
end)

T.test("pb.schema validates the definitions", function()
  local function bad(pattern, d) T.raises(pattern, pb.schema, d) end
  bad("pb.schema: M.t: unknown type 'Tagg'", {M = {{1, "t", "Tagg"}}})
  bad("pb.schema: M: duplicate field number 1 %([ab] and [ab]%)", {M = {{1, "a", "int32"}, {1, "b", "int32"}}})
  bad("pb.schema: M: duplicate field name 'a'", {M = {{1, "a", "int32"}, {2, "a", "int32"}}})
  bad("the field number must be an integer from 1 to 536870911", {M = {{0, "a", "int32"}}})
  bad("the field number must be an integer", {M = {{536870912, "a", "int32"}}})
  bad("the field number must be an integer", {M = {{1.5, "a", "int32"}}})
  bad("the field number must be an integer", {M = {{"1", "a", "int32"}}})
  bad("reserved by protobuf", {M = {{19000, "a", "int32"}}})
  bad("M: field #1: the second entry must be the field name", {M = {{1, 2, "int32"}}})
  bad("M.a: the third entry must be the type name", {M = {{1, "a"}}})
  bad("M: field #2 must be a table", {M = {{1, "a", "int32"}, "b"}})
  bad("M.a: unknown option 'repeat'", {M = {{1, "a", "int32", ["repeat"] = true}}})
  bad("M.a: option repeated must be true or false", {M = {{1, "a", "int32", repeated = 1}}})
  bad("M.a: a repeated field cannot be optional", {M = {{1, "a", "int32", repeated = true, optional = true}}})
  bad("M.a: a repeated field cannot be optional or in a oneof", {M = {{1, "a", "int32", repeated = true, oneof = "o"}}})
  bad("M.a: a oneof member already has presence", {M = {{1, "a", "int32", optional = true, oneof = "o"}}})
  bad("M: oneof name 'a' is also a field name", {M = {{1, "a", "int32"}, {2, "b", "int32", oneof = "a"}}})
  bad("M.m: a map needs key = TYPE and value = TYPE", {M = {{1, "m", "map", key = "string"}}})
  bad("M.m: invalid map key type 'double'", {M = {{1, "m", "map", key = "double", value = "string"}}})
  bad("M.m: invalid map key type 'bytes'", {M = {{1, "m", "map", key = "bytes", value = "string"}}})
  bad("M.m: invalid map key type 'M'", {M = {{1, "m", "map", key = "M", value = "string"}}})
  bad("M.m: a map value cannot be a map", {M = {{1, "m", "map", key = "string", value = "map"}}})
  bad("M.m: unknown type 'X'", {M = {{1, "m", "map", key = "string", value = "X"}}})
  bad("M.m: a map cannot be repeated", {M = {{1, "m", "map", key = "string", value = "string", repeated = true}}})
  bad("M.a: key and value are options of map fields only", {M = {{1, "a", "int32", key = "string"}}})
  bad("a message is a list of fields", {M = {a = {1, "a", "int32"}}})
  bad("keys must be type names", {{1, "a", "int32"}})
  bad("'string' cannot be a type name", {string = {}})
  bad("M must be a message %(a list of fields%) or a pb.enum", {M = 1})
  bad("enum E: [AB] and [AB] both have the value 1", {E = pb.enum{A = 1, B = 1}})
  T.raises("pb.enum: A must be a 32%-bit integer", pb.enum, {A = "x"})
  T.raises("pb.enum: A must be a 32%-bit integer", pb.enum, {A = 2^31 // 1})
  T.raises("pb.enum: keys must be value names", pb.enum, {1})
  T.raises("bad argument #1", pb.schema, "x")
  -- messages may refer to each other in any order, and to themselves
  local R = pb.schema{A = {{1, "b", "B"}}, B = {{1, "a", "A"}, {2, "self", "B", repeated = true}}}
  local v = pb.decode(R.A, pb.encode(R.A, {b = {a = {b = {self = {{}}}}}}))
  T.eq(#v.b.a.b.self, 1)
  T.eq(tostring(R.A), "pb.Message(A)")
end)

T.test("the brief's example", function()
  local bytes = pb.encode(S.Sandbox, {image_id = "im-1", cpu = 2, tags = {{key = "a", value = "b"}}, env = {A = "1"},
                                      timeout = 0, kind = "KIND_A"})
  T.eq(hex(bytes), "0a04696d2d31" .. "1002" .. "1a060a0161120162" .. "22060a0141120131" .. "2800" .. "3001")
  local msg = pb.decode(S.Sandbox, bytes)
  T.eq(msg.image_id, "im-1")
  T.eq(msg.tags, {{key = "a", value = "b"}})
  T.eq(msg.env, {A = "1"})
  T.eq(msg.timeout, 0)
  T.eq(msg.kind, "KIND_A")
end)

---------------------------------------------------------------------------------------------------
-- Cross-check with the reference implementation (Debian's python3-protobuf): python builds the same
-- schema as descriptors, parses what pb.encode wrote, lists every field it found, and serializes the
-- message again. Lua checks that python saw exactly the fields of the Lua table, that python's
-- bytes equal pb.encode's, and that pb.decode of python's bytes lists the same fields.

local PY = [==[
import sys
from google.protobuf import descriptor_pb2, descriptor_pool
try:
    from google.protobuf.message_factory import GetMessageClass
except ImportError:
    from google.protobuf.message_factory import MessageFactory
    GetMessageClass = lambda d: MessageFactory(d.file.pool).GetPrototype(d)
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"double": F.TYPE_DOUBLE, "float": F.TYPE_FLOAT, "int64": F.TYPE_INT64, "uint64": F.TYPE_UINT64,
           "int32": F.TYPE_INT32, "uint32": F.TYPE_UINT32, "sint32": F.TYPE_SINT32, "sint64": F.TYPE_SINT64,
           "fixed32": F.TYPE_FIXED32, "fixed64": F.TYPE_FIXED64, "sfixed32": F.TYPE_SFIXED32,
           "sfixed64": F.TYPE_SFIXED64, "bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES}
lines = [l.split() for l in open(sys.argv[1]).read().splitlines() if l]
enums = {l[1] for l in lines if l[0] == "enum"}
fd = descriptor_pb2.FileDescriptorProto(name="rb.proto", package="rb", syntax="proto3")

def settype(f, t):
    if t in SCALARS: f.type = SCALARS[t]
    else:
        f.type = F.TYPE_ENUM if t in enums else F.TYPE_MESSAGE
        f.type_name = ".rb." + t

def camel(name): return "".join(p[:1].upper() + p[1:] for p in name.split("_"))

msg = None
pending = []    # proto3 optional fields get synthetic oneofs after the real ones
oneofs = {}
def finish():
    for f in pending:
        f.oneof_index = len(msg.oneof_decl); f.proto3_optional = True
        msg.oneof_decl.add(name="_" + f.name)
cases = []
for l in lines:
    if l[0] == "enum":
        if msg is not None: finish(); msg = None
        en = fd.enum_type.add(name=l[1])
    elif l[0] == "value": en.value.add(name=l[1], number=int(l[2]))
    elif l[0] == "message":
        if msg is not None: finish()
        msg = fd.message_type.add(name=l[1]); pending = []; oneofs = {}
    elif l[0] == "field":
        num, name, typ, label = int(l[1]), l[2], l[3], l[4]
        f = msg.field.add(name=name, number=num, label=F.LABEL_OPTIONAL)
        if typ == "map":
            e = msg.nested_type.add(name=camel(name) + "Entry"); e.options.map_entry = True
            settype(e.field.add(name="key", number=1, label=F.LABEL_OPTIONAL), l[5])
            settype(e.field.add(name="value", number=2, label=F.LABEL_OPTIONAL), l[6])
            f.label = F.LABEL_REPEATED; f.type = F.TYPE_MESSAGE; f.type_name = ".rb.%s.%s" % (msg.name, e.name)
            continue
        settype(f, typ)
        if label == "repeated": f.label = F.LABEL_REPEATED
        elif label == "optional": pending.append(f)
        elif label.startswith("oneof:"):
            o = label[6:]
            if o not in oneofs: oneofs[o] = len(msg.oneof_decl); msg.oneof_decl.add(name=o)
            f.oneof_index = oneofs[o]
    elif l[0] == "case":
        if msg is not None: finish(); msg = None
        cases.append((l[1], bytes.fromhex(l[2]) if len(l) > 2 else b""))
pool = descriptor_pool.DescriptorPool()
pool.Add(fd)

def fmt(f, v):
    if f.type == f.TYPE_STRING: return v.encode().hex() or "-"
    if f.type == f.TYPE_BYTES: return v.hex() or "-"
    if f.type == f.TYPE_BOOL: return "true" if v else "false"
    if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT): return "%.17g" % v
    if v >= 2 ** 63: v -= 2 ** 64      # uint64 as Lua sees it
    return "%d" % v

def dump(m, prefix, out):
    if len(m.UnknownFields()): out.append(prefix + "UNKNOWN")
    for f, v in m.ListFields():
        name = prefix + f.name
        def one(n, fd, x):
            if fd.message_type: out.append(n + "={}"); dump(x, n + ".", out)
            else: out.append(n + "=" + fmt(fd, x))
        if f.message_type and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            for k in v: one("%s[%s]" % (name, fmt(kf, k)), vf, v[k])
        elif f.label == f.LABEL_REPEATED:
            for i, x in enumerate(v, 1): one("%s[%d]" % (name, i), f, x)
        else: one(name, f, v)

for name, data in cases:
    m = GetMessageClass(pool.FindMessageTypeByName("rb." + name))()
    try: m.ParseFromString(data)
    except Exception as e:
        print("error", str(e).replace("\n", " ")); continue
    out = []
    dump(m, "", out)
    for l in sorted(out): print("line", l)
    print("bytes", m.SerializeToString().hex() or "-")
]==]

local function python_ok()
  local p = io.popen("/usr/bin/python3 -c 'import google.protobuf' 2>/dev/null && echo yes")
  local ok = p and p:read("a"):match("yes")
  if p then p:close() end
  return ok
end

-- The Lua side of the listing: the same lines python prints, from a Lua table.
local function kind_of(t) return getmetatable(defs[t]) and "enum" or defs[t] and "message" or "scalar" end
local function fmt(t, v)
  if t == "string" or t == "bytes" then return v == "" and "-" or hex(v) end
  if t == "bool" then return tostring(v) end
  if t == "double" or t == "float" then return ("%.17g"):format(v) end
  if kind_of(t) == "enum" then v = type(v) == "string" and S[t][v] or v end
  return ("%d"):format(v)
end
local defaults = {bool = false, string = "", bytes = "", double = 0, float = 0}
local function dump(mname, tbl, prefix, out)
  for _, f in ipairs(defs[mname]) do
    local name, t = f[2], f[3]
    local v = tbl[name]
    local path = prefix .. name
    local function one(p, typ, x)
      if kind_of(typ) == "message" then out[#out + 1] = p .. "={}"; dump(typ, x, p .. ".", out)
      else out[#out + 1] = p .. "=" .. fmt(typ, x) end
    end
    if v == nil then -- absent
    elseif t == "map" then
      for k, x in pairs(v) do one(("%s[%s]"):format(path, fmt(f.key, k)), f.value, x) end
    elseif f.repeated then
      for i, x in ipairs(v) do one(("%s[%d]"):format(path, i), t, x) end
    elseif f.optional or f.oneof or kind_of(t) == "message" then one(path, t, v)
    else
      local d = defaults[t]
      if d == nil then d = 0 end
      if kind_of(t) == "enum" then d = 0; v = type(v) == "string" and S[t][v] or v end
      if v ~= d then one(path, t, v) end
    end
  end
  return out
end

local function schema_lines()
  local names = {}
  for k in pairs(defs) do names[#names + 1] = k end
  table.sort(names)
  local out = {}
  for _, n in ipairs(names) do
    if getmetatable(defs[n]) then
      out[#out + 1] = "enum " .. n
      local vals = {}
      for k, v in pairs(defs[n]) do vals[#vals + 1] = {k, v} end
      table.sort(vals, function(a, b) return a[2] < b[2] end)    -- proto3: the 0 value first
      for _, kv in ipairs(vals) do out[#out + 1] = ("value %s %d"):format(kv[1], kv[2]) end
    end
  end
  for _, n in ipairs(names) do
    if not getmetatable(defs[n]) then
      out[#out + 1] = "message " .. n
      for _, f in ipairs(defs[n]) do
        local label = f.repeated and "repeated" or f.optional and "optional" or f.oneof and ("oneof:" .. f.oneof) or "plain"
        out[#out + 1] = ("field %d %s %s %s %s %s"):format(f[1], f[2], f[3], label, f.key or "", f.value or "")
      end
    end
  end
  return out
end

local oracle_cases = {
  {"Sandbox", {image_id = "im-1", cpu = 2, tags = {{key = "a", value = "b"}, {}}, env = {A = "1"}, timeout = 0,
               kind = "KIND_A", name = "n", ids = {1, -1, MAXI, MINI}, data = "\0\1\255", ratio = -1.5, f = 0.25,
               ok = true, s = MINI, x = 4294967295, y = MINI, z = -1, w = I32MIN, i32 = -1, s32 = I32MIN}},
  {"Sandbox", {id = -1, kind = 42, timeout = 4294967295, env = {[""] = ""}}},
  {"Sandbox", {}},
  {"Scalars", {d = 1e308, f = 3.4028234663852886e38, i64 = MAXI, u64 = MINI, i32 = I32MAX, u32 = 4294967295,
               s32 = I32MAX, s64 = MAXI, fx32 = 1, fx64 = MAXI, sf32 = -1, sf64 = -1, b = true, str = "héllo",
               by = "\0", k = "KIND_B",
               rd = {0.0, 1.5, math.huge, -math.huge}, rf = {0.0, -0.5}, ri64 = {0, MINI}, ru64 = {-1, 0},
               ri32 = {-1, 0, 1}, ru32 = {4294967295}, rs32 = {I32MIN, I32MAX}, rs64 = {MINI, MAXI, -1},
               rfx32 = {0, 4294967295}, rfx64 = {-1}, rsf32 = {I32MIN}, rsf64 = {MINI}, rb = {false, true},
               rstr = {"", "x"}, rby = {"", "\255"}, rk = {"KIND_A", 5, "KIND_UNSPECIFIED"}}},
  {"Opt", {i = 0, s = "", b = false, d = 0.0, k = "KIND_UNSPECIFIED", t = {}}},
  {"Opt", {i = -1, plain = 3}},
  {"Node", {name = "root", child = {name = "c", child = {tag = {key = "deep"}}}, children = {{num = -1}, {text = ""}},
            by_name = {x = {name = "X", by_id = {[7] = {}}}}, by_id = {[-1] = {key = "k"}}, kinds = {k = "KIND_B"},
            flags = {[true] = "\0"}, big = {[-1] = MINI}, fx = {[-2] = 0.5}, far = 1, last = -1}},
  {"Node", {tag = {}}},
  {"Node", {by_name = {a = {}, b = {name = "B"}, c = {child = {}}}, flags = {[true] = "", [false] = "x"}}, multi = true},
  {"Empty", {}},
}

T.test("cross-check with the reference protobuf implementation (python3-protobuf)", function()
  T.ok(python_ok(), "/usr/bin/python3 with google.protobuf: install Debian's python3-protobuf (tests/deps.sh does)")
  local lines = schema_lines()
  local encoded = {}
  for i, c in ipairs(oracle_cases) do
    encoded[i] = pb.encode(S[c[1]], c[2])
    lines[#lines + 1] = ("case %s %s"):format(c[1], hex(encoded[i]))
  end
  local input, script = os.tmpname(), os.tmpname()
  local f = assert(io.open(input, "w")); f:write(table.concat(lines, "\n"), "\n"); f:close()
  f = assert(io.open(script, "w")); f:write(PY); f:close()
  local p = assert(io.popen(("/usr/bin/python3 %s %s 2>&1"):format(script, input)))
  local out = p:read("a")
  p:close()
  os.remove(input); os.remove(script)
  local results, cur = {}, nil
  for l in out:gmatch("[^\n]+") do
    local kind, rest = l:match("^(%S+) (.*)$")
    if kind == "line" then
      cur = cur or {lines = {}}
      cur.lines[#cur.lines + 1] = rest
    elseif kind == "bytes" then
      cur = cur or {lines = {}}
      cur.bytes = rest == "-" and "" or unhex(rest)
      results[#results + 1] = cur
      cur = nil
    elseif kind == "error" then
      results[#results + 1] = {error = rest}
    else
      error("unexpected output from python: " .. out)
    end
  end
  T.eq(#results, #oracle_cases, "one result per case: " .. out)
  for i, c in ipairs(oracle_cases) do
    local r = results[i]
    local what = ("case %d (%s)"):format(i, c[1])
    T.eq(r.error, nil, what .. ": python could not parse pb.encode's bytes")
    local want = dump(c[1], c[2], "", {})
    table.sort(want)
    T.eq(r.lines, want, what .. ": fields python found")
    if not c.multi then T.eq(hex(encoded[i]), hex(r.bytes), what .. ": python's bytes") end
    local back = assert(pb.decode(S[c[1]], r.bytes))
    local got = dump(c[1], back, "", {})
    table.sort(got)
    T.eq(got, want, what .. ": pb.decode of python's bytes")
  end
end)

T.run()
