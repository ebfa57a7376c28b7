/* The libFuzzer entry point shared by targets written in Lua: `setup` is a chunk that returns a
 * function of one string; every input is passed to it, and an error raised there is a finding. */
#ifndef RUNBOX_FUZZ_LUA_TARGET_H
#define RUNBOX_FUZZ_LUA_TARGET_H
#include "runtime.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int fuzz_lua_call(const char *name, const char *setup, const uint8_t *data, size_t size) {
    static lua_State *L;
    static int fn_ref;
    if (!L) {
        L = rb_runtime_new();
        if (!L || luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
            fprintf(stderr, "%s setup: %s\n", name, L ? lua_tostring(L, -1) : "no state");
            abort();
        }
        fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}

#endif
