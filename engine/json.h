/* runbox.json: JSON decode/encode with Lua 5.4 integers kept exact, sorted keys, a pretty form for
 * files people read, and explicit empty arrays. See docs/api/json.md. */
#ifndef RUNBOX_JSON_H
#define RUNBOX_JSON_H
#include <lua.h>

int luaopen_runbox_json(lua_State *L);

#endif
