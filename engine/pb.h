/* runbox.pb: the protobuf wire codec, driven by schema tables written in Lua (docs/api/pb.md). */
#ifndef RUNBOX_PB_H
#define RUNBOX_PB_H
#include <lua.h>

/* Opens the module table: pb.schema, pb.enum, pb.encode, pb.decode. */
int luaopen_runbox_pb(lua_State *L);

#endif
