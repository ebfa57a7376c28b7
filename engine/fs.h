/* runbox.fs: files and directories (read, atomic write, append, mkdir -p, walk, stat, remove tree,
 * temp dirs, file locks). Disk files only, so every call is synchronous. See docs/api/fs.md. */
#ifndef RUNBOX_FS_H
#define RUNBOX_FS_H
#include <lua.h>

int luaopen_runbox_fs(lua_State *L);

#endif
