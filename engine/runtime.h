/* The Lua runtime: one lua_State with runbox's modules, the embedded Lua library, and the scheduler. */
#ifndef RUNBOX_RUNTIME_H
#define RUNBOX_RUNTIME_H
#include <lua.h>

/* New state with standard libraries, C modules in package.preload and a searcher for the embedded
 * Lua library (or the tree named by RUNBOX_LUA_PATH). NULL on failure. */
lua_State *rb_runtime_new(void);
void rb_runtime_close(lua_State *L);

/* Pushes the source of an embedded recipe as a loaded chunk; returns 0, or -1 when there is none. */
int rb_load_recipe(lua_State *L, const char *name);

/* Lists embedded recipe names (a Lua table) on the stack. */
void rb_push_recipe_names(lua_State *L);

/* Runs the function at the top of the stack as the main task with the given args (below it nargs
 * values were pushed after the function) inside the scheduler. Returns the process exit status and
 * prints the error with its traceback on failure. */
int rb_run_main(lua_State *L, int nargs);

#endif
