/* Small Lua helpers shared by the C modules. */
#ifndef RUNBOX_LUAX_H
#define RUNBOX_LUAX_H
#include <lua.h>
#include <lauxlib.h>

/* Pushes require(module)[field]. */
void rbx_push_module_field(lua_State *L, const char *module, const char *field);

/* Reads the file whose path is at index path_idx through runbox.fs.read. Returns 1 with the data
 * pushed, or 0 with nil, err pushed (err names the file). */
int rbx_read_file(lua_State *L, int path_idx);

/* Like luaL_newlib, but every function gets runbox.errors.new as its first upvalue, followed by the
 * nup values already on the stack (they are popped). */
void rbx_newlib_with_errors(lua_State *L, const luaL_Reg *funcs, int nup);

/* Registers the metatable `name` of a C object: __index holds methods (with errors: each gets
 * runbox.errors.new as its first upvalue, as rbx_newlib_with_errors), __gc and __close call
 * release. Leaves the stack as it was. */
void rbx_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction release, int with_errors);

/* Option tables: rbx_opt_field pushes t[name] and returns 1 when it is present with the given Lua
 * type, returns 0 (nothing pushed) when absent, and raises "<what> 'name' must be a ..." otherwise.
 * rbx_opt_bool reads a boolean option (absent: false). */
int rbx_opt_field(lua_State *L, int t, const char *name, int type, const char *what);
int rbx_opt_bool(lua_State *L, int t, const char *name, const char *what);

#endif
