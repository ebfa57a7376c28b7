/* The Lua runtime: state set-up, module registry, embedded library searcher, main task. */
#include "runtime.h"
#include "embedded.h"
#include "loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>

/* C modules. Weak, so the engine links while a module is being written; a missing one is an error
 * at require time, not a crash. */
#define RB_MODULES(X) \
    X("runbox.c.loop", luaopen_runbox_c_loop) \
    X("runbox.c.proc", luaopen_runbox_c_proc) \
    X("runbox.c.net", luaopen_runbox_c_net) \
    X("runbox.c.http", luaopen_runbox_c_http) \
    X("runbox.c.h2", luaopen_runbox_c_h2) \
    X("runbox.c.tar", luaopen_runbox_c_tar) \
    X("runbox.c.log", luaopen_runbox_c_log) \
    X("runbox.c.repl", luaopen_runbox_c_repl) \
    X("runbox.pb", luaopen_runbox_pb) \
    X("runbox.json", luaopen_runbox_json) \
    X("runbox.yaml", luaopen_runbox_yaml) \
    X("runbox.fs", luaopen_runbox_fs) \
    X("runbox.util", luaopen_runbox_util)

#define DECLARE(name, fn) int fn(lua_State *L) __attribute__((weak));
RB_MODULES(DECLARE)

static const struct { const char *name; lua_CFunction fn; } c_modules[] = {
#define ENTRY(name, fn) {name, fn},
    RB_MODULES(ENTRY)
    {NULL, NULL}};

static const struct rb_embedded *find_embedded(const char *kind, const char *name) {
    for (int i = 0; i < rb_embedded_count; i++)
        if (!strcmp(rb_embedded_files[i].kind, kind) && !strcmp(rb_embedded_files[i].name, name))
            return &rb_embedded_files[i];
    return NULL;
}

/* With RUNBOX_LUA_PATH=DIR, sources come from DIR/lua and DIR/recipes (a development tree). */
static int load_override(lua_State *L, const char *kind, const char *name) {
    const char *root = getenv("RUNBOX_LUA_PATH");
    if (!root || !*root) return -1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, root);
    luaL_addstring(&b, !strcmp(kind, "module") ? "/lua/" : "/recipes/");
    for (const char *p = name; *p; p++) luaL_addchar(&b, *p == '.' && !strcmp(kind, "module") ? '/' : *p);
    luaL_pushresult(&b);
    const char *base = lua_tostring(L, -1);
    lua_pushfstring(L, "%s.lua", base);
    FILE *f = fopen(lua_tostring(L, -1), "r");
    if (!f) { lua_pop(L, 1); lua_pushfstring(L, "%s/init.lua", base); f = fopen(lua_tostring(L, -1), "r"); }
    if (!f) { lua_pop(L, 2); return -1; }
    fclose(f);
    const char *path = lua_tostring(L, -1);
    if (luaL_loadfile(L, path) != LUA_OK) return lua_error(L);
    lua_remove(L, -2); lua_remove(L, -2);
    return 0;
}

static int load_source(lua_State *L, const char *kind, const char *name) {
    if (load_override(L, kind, name) == 0) return 0;
    const struct rb_embedded *e = find_embedded(kind, name);
    if (!e) return -1;
    if (luaL_loadbufferx(L, (const char *)e->data, e->len, e->chunkname, "t") != LUA_OK) lua_error(L);
    return 0;
}

static int embedded_searcher(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    if (strncmp(name, "runbox", 6) != 0) { lua_pushfstring(L, "no embedded runbox module '%s'", name); return 1; }
    if (load_source(L, "module", name) != 0) { lua_pushfstring(L, "no embedded module '%s'", name); return 1; }
    lua_pushstring(L, name);
    return 2;
}

int rb_load_recipe(lua_State *L, const char *name) { return load_source(L, "recipe", name); }

void rb_push_recipe_names(lua_State *L) {
    lua_newtable(L);
    int n = 0;
    for (int i = 0; i < rb_embedded_count; i++)
        if (!strcmp(rb_embedded_files[i].kind, "recipe")) {
            lua_pushstring(L, rb_embedded_files[i].name);
            lua_rawseti(L, -2, ++n);
        }
}

static int missing_module(lua_State *L) {
    return luaL_error(L, "module '%s' is not built into this runbox", lua_tostring(L, lua_upvalueindex(1)));
}

lua_State *rb_runtime_new(void) {
    if (rb_loop_init() != 0) { perror("runbox: event loop"); return NULL; }
    lua_State *L = luaL_newstate();
    if (!L) return NULL;
    /* Runs churn through short-lived strings (process output, JSON): collecting when memory
       reaches 4x the live data instead of 2x, in bigger steps, costs a few MB and saves about a
       tenth of a batch's CPU (bench/README.md). */
    lua_gc(L, LUA_GCINC, 400, 400, 0);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (int i = 0; c_modules[i].name; i++) {
        if (c_modules[i].fn) lua_pushcfunction(L, c_modules[i].fn);
        else { lua_pushstring(L, c_modules[i].name); lua_pushcclosure(L, missing_module, 1); }
        lua_setfield(L, -2, c_modules[i].name);
    }
    lua_pop(L, 1);
    /* our searcher goes right after preload, before the file-system searchers */
    lua_getfield(L, -1, "searchers");
    int n = (int)luaL_len(L, -1);
    for (int i = n; i >= 2; i--) { lua_rawgeti(L, -1, i); lua_rawseti(L, -2, i + 1); }
    lua_pushcfunction(L, embedded_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
    return L;
}

void rb_proc_reap_all(void);

void rb_runtime_close(lua_State *L) {
    lua_close(L);
    rb_proc_reap_all();   /* children whose handles were never collected */
    rb_loop_free();
}

int rb_run_main(lua_State *L, int nargs) {
    int base = lua_gettop(L) - nargs;     /* index of the function */
    lua_getglobal(L, "require");
    lua_pushstring(L, "runbox.sched");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "runbox: %s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    lua_insert(L, base);                  /* main, fn, args... */
    if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "runbox: internal error: %s\n", lua_tostring(L, -1));
        return 1;
    }
    int status = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return status;
}
