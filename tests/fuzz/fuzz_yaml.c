/* libFuzzer target for runbox.yaml: decode_all must return a list or nil, err (never raise), and
 * whatever decodes must go through json.encode (so no cycles, no wild values) unless it holds
 * NaN or infinity. */
#include "runtime.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static const char *setup =
    "local yaml, json = require 'runbox.yaml', require 'runbox.json'\n"
    "return function(data)\n"
    "  local v, err = yaml.decode_all(data)\n"
    "  if v == nil then assert(err ~= nil and err.code == 'yaml', 'decode failed without an error'); return end\n"
    "  if #data > 2000 then return end\n"
    "  local ok, e = pcall(json.encode, v)\n"
    "  if not ok then assert(tostring(e):find('NaN') or tostring(e):find('infinity') or tostring(e):find('table key'), e) end\n"
    "end\n";

static lua_State *L;
static int fn_ref;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!L) {
        L = rb_runtime_new();
        if (!L || luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
            fprintf(stderr, "fuzz_yaml setup: %s\n", L ? lua_tostring(L, -1) : "no state");
            abort();
        }
        fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "fuzz_yaml: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
