/* runbox.fs: files and directories (read, atomic write, append, mkdir -p, walk, stat, remove tree,
 * temp dirs, file locks). Disk files only, so every call is synchronous. See docs/api/fs.md. */
#ifndef RUNBOX_FS_H
#define RUNBOX_FS_H
#include <lua.h>
#include <sys/types.h>

/* mkdir -p of path (modified while it works): 1 made, 0 existed, -1 with errno and path cut after
 * the folder that could not be made. */
int rb_make_dirs(char *path, mode_t mode);

int luaopen_runbox_fs(lua_State *L);

#endif
