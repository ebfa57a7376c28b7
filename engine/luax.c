/* Small Lua helpers shared by the C modules. See luax.h. */
#include "luax.h"

#include <lauxlib.h>

void rbx_push_module_field(lua_State *L, const char *module, const char *field) {
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    lua_call(L, 1, 1);
    lua_getfield(L, -1, field);
    lua_remove(L, -2);
}

int rbx_read_file(lua_State *L, int path_idx) {
    path_idx = lua_absindex(L, path_idx);
    rbx_push_module_field(L, "runbox.fs", "read");
    lua_pushvalue(L, path_idx);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) return 0;
    lua_pop(L, 1);
    return 1;
}

void rbx_newlib_with_errors(lua_State *L, const luaL_Reg *funcs, int nup) {
    int n = 0;
    while (funcs[n].name) n++;
    lua_createtable(L, 0, n);
    lua_insert(L, -(nup + 1));                      /* lib, upvalues... */
    rbx_push_module_field(L, "runbox.errors", "new");
    lua_insert(L, -(nup + 1));                      /* lib, new, upvalues... */
    luaL_setfuncs(L, funcs, nup + 1);
}

void rbx_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction release, int with_errors) {
    if (luaL_newmetatable(L, name)) {
        if (with_errors) rbx_newlib_with_errors(L, methods, 0);
        else { lua_newtable(L); luaL_setfuncs(L, methods, 0); }
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, release);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, release);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
}

int rbx_opt_field(lua_State *L, int t, const char *name, int type, const char *what) {
    int got = lua_getfield(L, t, name);
    if (got == LUA_TNIL) { lua_pop(L, 1); return 0; }
    if (got != type)
        return luaL_error(L, "%s '%s' must be a %s, not a %s", what, name, lua_typename(L, type),
                          luaL_typename(L, -1));
    return 1;
}

int rbx_opt_bool(lua_State *L, int t, const char *name, const char *what) {
    if (!rbx_opt_field(L, t, name, LUA_TBOOLEAN, what)) return 0;
    int b = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}
