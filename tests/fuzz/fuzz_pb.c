/* libFuzzer target for runbox.pb: decodes the input with a schema that has every field kind
 * (all scalars plain, optional and repeated, enums, oneofs, maps with every key kind and message
 * values, recursion), then re-encodes what decoded and checks that decoding that gives the same
 * table. Decoding must return a table or nil, err; anything raised is a bug and aborts. */
#include "pb.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const char *setup =
    "local pb = require 'runbox.pb'\n"
    "local S = pb.schema{\n"
    "  Kind = pb.enum{K0 = 0, K1 = 1, K2 = 2, KNEG = -1},\n"
    "  Leaf = {{1, 's', 'string'}, {2, 'n', 'int32'}},\n"
    "  Node = {\n"
    "    {1, 'd', 'double'}, {2, 'f', 'float'}, {3, 'i64', 'int64'}, {4, 'u64', 'uint64'},\n"
    "    {5, 'i32', 'int32'}, {6, 'u32', 'uint32'}, {7, 's32', 'sint32'}, {8, 's64', 'sint64'},\n"
    "    {9, 'fx32', 'fixed32'}, {10, 'fx64', 'fixed64'}, {11, 'sf32', 'sfixed32'}, {12, 'sf64', 'sfixed64'},\n"
    "    {13, 'b', 'bool'}, {14, 'str', 'string'}, {15, 'by', 'bytes'}, {16, 'k', 'Kind'},\n"
    "    {17, 'oi', 'int64', optional = true}, {18, 'os', 'string', optional = true},\n"
    "    {19, 'ok', 'Kind', optional = true}, {20, 'od', 'double', optional = true},\n"
    "    {21, 'rd', 'double', repeated = true}, {22, 'rf', 'float', repeated = true},\n"
    "    {23, 'ri', 'sint64', repeated = true}, {24, 'ru', 'uint32', repeated = true},\n"
    "    {25, 'rfx', 'fixed32', repeated = true}, {26, 'rsf', 'sfixed64', repeated = true},\n"
    "    {27, 'rb', 'bool', repeated = true}, {28, 'rk', 'Kind', repeated = true},\n"
    "    {29, 'rs', 'string', repeated = true}, {30, 'rby', 'bytes', repeated = true},\n"
    "    {31, 'child', 'Node'}, {32, 'children', 'Node', repeated = true}, {33, 'leaf', 'Leaf'},\n"
    "    {34, 'm_ss', 'map', key = 'string', value = 'string'},\n"
    "    {35, 'm_in', 'map', key = 'int32', value = 'Node'},\n"
    "    {36, 'm_bk', 'map', key = 'bool', value = 'Kind'},\n"
    "    {37, 'm_ul', 'map', key = 'uint64', value = 'Leaf'},\n"
    "    {38, 'm_sd', 'map', key = 'sint32', value = 'double'},\n"
    "    {39, 'm_fb', 'map', key = 'fixed64', value = 'bytes'},\n"
    "    {40, 'o_s', 'string', oneof = 'one'}, {41, 'o_n', 'Node', oneof = 'one'},\n"
    "    {42, 'o_i', 'sint32', oneof = 'one'}, {43, 'o_f', 'float', oneof = 'one'},\n"
    "    {1000, 'far', 'int32'}, {536870911, 'last', 'fixed64'},\n"
    "  },\n"
    "}\n"
    /* deep equality where NaN equals NaN */
    "local function same(a, b)\n"
    "  if a == b or (a ~= a and b ~= b) then return true end\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then return false end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "return function(data)\n"
    "  local m, err = pb.decode(S.Node, data)\n"
    "  if not m then assert(err ~= nil, 'decode failed without an error'); return end\n"
    "  local bytes = pb.encode(S.Node, m)\n"
    "  local again = assert(pb.decode(S.Node, bytes))\n"
    "  assert(same(m, again), 'decode(encode(decode(x))) differs from decode(x)')\n"
    "end\n";

static lua_State *L;
static int fn_ref;

static void init(void) {
    L = luaL_newstate();
    if (!L) abort();
    luaL_openlibs(L);
    luaL_requiref(L, "runbox.pb", luaopen_runbox_pb, 0);
    lua_pop(L, 1);
    if (luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_pb setup: %s\n", lua_tostring(L, -1));
        abort();
    }
    fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) init();
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_pb: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
