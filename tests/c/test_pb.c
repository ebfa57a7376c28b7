/* runbox.pb from C in a bare lua_State (no runbox library): decode errors fall back to plain
 * strings, and a deterministic stream of random and mutated inputs never makes decode raise or
 * crash (a small fuzzer that runs in every test build, sanitizers included). Prints TAP. */
#include "pb.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int passed, failed, n;

static void check(int ok, const char *name, const char *detail) {
    n++;
    if (ok) { passed++; printf("ok %d - %s\n", n, name); }
    else { failed++; printf("not ok %d - %s\n#   %s\n", n, name, detail ? detail : ""); }
}

static const char *schema =
    "local pb = ...\n"
    "return pb.schema{\n"
    "  K = pb.enum{Z = 0, A = 1},\n"
    "  T = {{1, 'k', 'string'}, {2, 'v', 'sint64'}},\n"
    "  N = {{1, 's', 'string'}, {2, 'i', 'int32'}, {3, 'c', 'N'}, {4, 'r', 'T', repeated = true},\n"
    "       {5, 'p', 'fixed64', repeated = true}, {6, 'm', 'map', key = 'int64', value = 'N'},\n"
    "       {7, 'e', 'K'}, {8, 'd', 'double', optional = true}, {9, 'o1', 'bytes', oneof = 'o'},\n"
    "       {10, 'o2', 'T', oneof = 'o'}, {11, 'f', 'float', repeated = true}},\n"
    "}\n";

/* Runs chunk with the module and the schema as arguments; leaves its results on the stack. */
static int run(lua_State *L, const char *chunk, int nres) {
    if (luaL_loadstring(L, chunk) != LUA_OK) return -1;
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    return lua_pcall(L, 2, nres, 0) == LUA_OK ? 0 : -1;
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint32_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    /* no searcher can find runbox.errors: decode errors must be plain strings */
    lua_getglobal(L, "package");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    lua_settop(L, 0);
    luaopen_runbox_pb(L);                                   /* 1: module */
    if (luaL_loadstring(L, schema) != LUA_OK) { printf("Bail out! %s\n", lua_tostring(L, -1)); return 1; }
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) { printf("Bail out! %s\n", lua_tostring(L, -1)); return 1; }
    /* 2: schema */

    int r = run(L, "local pb, S = ...\n"
                   "local m, err = pb.decode(S.N, '\\x1a\\x03\\x0a\\x05a')\n"
                   "return m == nil and type(err) == 'string' and err", 1);
    check(r == 0 && lua_isstring(L, -1) && strstr(lua_tostring(L, -1), "N.c.s: length 5 goes past the end") != NULL,
          "decode errors are strings naming the field path without runbox.errors", lua_tostring(L, -1));
    lua_settop(L, 2);

    /* a valid message with every kind of field, to mutate */
    r = run(L, "local pb, S = ...\n"
               "return pb.encode(S.N, {s = 'abc', i = -5, c = {s = 'x', c = {i = 1}}, r = {{k = 'a', v = -1}, {}},\n"
               "  p = {1, 2, -1}, m = {[7] = {s = 'm'}, [-1] = {}}, e = 'A', d = 0.0, o2 = {k = 'o'}, f = {0.5, 1.5}})", 1);
    size_t vlen = 0;
    const char *valid = r == 0 ? lua_tolstring(L, -1, &vlen) : "";
    check(r == 0 && vlen > 20, "encode a message with every field kind", r ? lua_tostring(L, -1) : NULL);
    int vidx = lua_gettop(L);                               /* keeps `valid` alive */

    /* random bytes and mutations of the valid message: decode returns a table or nil + string,
     * never raises; what decodes re-encodes without error */
    lua_getfield(L, 1, "decode");
    int dec = lua_gettop(L);
    lua_getfield(L, 1, "encode");
    int enc = lua_gettop(L);
    lua_getfield(L, 2, "N");
    int msg = lua_gettop(L);
    luaL_Buffer b;
    int bad = 0, decoded = 0, rejected = 0;
    char why[200] = "";
    for (int iter = 0; iter < 30000 && !bad; iter++) {
        int top = lua_gettop(L);
        luaL_buffinit(L, &b);
        if (iter % 2) {
            size_t len = next_rand() % 64;
            for (size_t i = 0; i < len; i++) luaL_addchar(&b, (char)next_rand());
        } else {
            size_t cut = vlen ? next_rand() % (vlen + 1) : 0;
            for (size_t i = 0; i < cut; i++) luaL_addchar(&b, valid[i]);
            for (int k = next_rand() % 4; k > 0 && luaL_bufflen(&b) > 0; k--)
                luaL_buffaddr(&b)[next_rand() % luaL_bufflen(&b)] = (char)next_rand();
        }
        luaL_pushresult(&b);
        int input = lua_gettop(L);
        lua_pushvalue(L, dec);
        lua_pushvalue(L, msg);
        lua_pushvalue(L, input);
        if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
            snprintf(why, sizeof why, "decode raised: %s", lua_tostring(L, -1));
            bad = 1;
        } else if (lua_istable(L, -2)) {
            decoded++;
            lua_pushvalue(L, enc);
            lua_pushvalue(L, msg);
            lua_pushvalue(L, -4);
            if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
                snprintf(why, sizeof why, "re-encode raised: %s", lua_tostring(L, -1));
                bad = 1;
            }
        } else if (lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING) rejected++;
        else {
            snprintf(why, sizeof why, "decode returned %s, %s", luaL_typename(L, -2), luaL_typename(L, -1));
            bad = 1;
        }
        lua_settop(L, top);
    }
    check(!bad, "30000 random and mutated inputs: decode never raises", why);
    check(decoded > 100 && rejected > 100, "the inputs exercise both outcomes", "too few decoded or rejected");
    (void)vidx;

    lua_close(L);
    printf("1..%d\n# test_pb.c: %d passed, %d failed\n", n, passed, failed);
    return failed ? 1 : 0;
}
