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
