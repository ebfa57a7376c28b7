/* libFuzzer target for runbox.json: decode must return a value or nil, err (never raise); what
 * decodes must encode, and encoding, decoding and encoding again must give the same text (also
 * through the pretty form). */
#include "runtime.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const char *setup =
    "local json = require 'runbox.json'\n"
    "return function(data)\n"
    "  local v, err = json.decode(data)\n"
    "  if v == nil then assert(err ~= nil and err.line and err.column, 'decode failed without an error'); return end\n"
    "  local ok, text = pcall(json.encode, v)\n"
    "  if not ok then assert(tostring(text):find('infinity'), text); return end\n"
    "  local again, e2 = json.decode(text)\n"
    "  assert(e2 == nil, e2)\n"
    "  local text2 = json.encode(again)\n"
    "  local p, e3 = json.decode(json.pretty(again))\n"
    "  assert(e3 == nil, e3)\n"
    "  assert(json.encode(p) == text2, 'pretty round trip differs')\n"
    "  assert(json.encode(json.decode(text2)) == text2, 'encode(decode(t)) is not stable')\n"
    /* with invalid UTF-8 in keys two keys may become one; otherwise nothing may change */
    "  if utf8.len(data) then assert(text2 == text, 'encode(decode(encode(x))) differs') end\n"
    "end\n";

static lua_State *L;
static int fn_ref;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) {
        L = rb_runtime_new();
        if (!L || luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
            fprintf(stderr, "fuzz_json setup: %s\n", L ? lua_tostring(L, -1) : "no state");
            abort();
        }
        fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_json: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
