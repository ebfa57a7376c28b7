/* runbox.yaml: YAML documents into Lua values (libyaml's event parser, YAML 1.2 core schema
 * scalars, anchors and aliases with a limit, merge keys). See docs/api/yaml.md.
 * Named rb_yaml.h so that it does not hide libyaml's own <yaml.h>. */
#ifndef RUNBOX_RB_YAML_H
#define RUNBOX_RB_YAML_H
#include <lua.h>

int luaopen_runbox_yaml(lua_State *L);

#endif
