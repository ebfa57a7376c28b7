/* runbox.fs: files and directories. See fs.h and docs/api/fs.md.
 *
 * Every failure returns nil, err where err is a runbox.errors object with code "fs", a message
 * naming the path and the system's reason, and fields path, errno and reason (not_found, exists,
 * permission, locked, invalid or io) for code that needs to tell cases apart. Bad arguments raise. */
#define _GNU_SOURCE
#include "fs.h"
#include "luax.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <lauxlib.h>

#define ERRORS_NEW lua_upvalueindex(1)   /* runbox.errors.new, an upvalue of every function */

static const char *reason_of(int e) {
    switch (e) {
    case ENOENT: case ENOTDIR: return "not_found";
    case EEXIST: case ENOTEMPTY: return "exists";
    case EACCES: case EPERM: case EROFS: return "permission";
    case EWOULDBLOCK: return "locked";
    case EINVAL: return "invalid";
    default: return "io";
    }
}

/* Pushes nil and errors.new("fs", message, {path=, errno=, reason=}); returns 2. */
static int fail_msg(lua_State *L, const char *reason, const char *path, int err, const char *msg) {
    lua_pushnil(L);
    lua_pushvalue(L, ERRORS_NEW);
    lua_pushliteral(L, "fs");
    lua_pushstring(L, msg);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    if (err) { lua_pushinteger(L, err); lua_setfield(L, -2, "errno"); }
    lua_call(L, 3, 1);
    return 2;
}

/* "cannot <what> '<path>': <strerror>" for the saved errno e. */
static int fail(lua_State *L, const char *what, const char *path, int e) {
    const char *msg = lua_pushfstring(L, "cannot %s '%s': %s", what, path, strerror(e));
    int n = fail_msg(L, reason_of(e), path, e, msg);
    lua_remove(L, -3);
    return n;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* Mode argument: an integer (0x1ed, tonumber("755", 8)) or an octal string ("755", "0644"). */
static mode_t opt_mode(lua_State *L, int idx, mode_t def) {
    if (lua_isnoneornil(L, idx)) return def;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        long v = strtol(s, &end, 8);
        if (!*s || *end || v < 0 || v > 07777) luaL_argerror(L, idx, "mode must be octal digits like \"755\"");
        return (mode_t)v;
    }
    lua_Integer v = luaL_checkinteger(L, idx);
    luaL_argcheck(L, v >= 0 && v <= 07777, idx, "mode must be between 0 and 07777");
    return (mode_t)v;
}

/* A writable copy of s (mkstemp templates; Lua strings must never be changed in place). */
static char *scratch_copy(lua_State *L, const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(lua_newuserdatauv(L, n, 0), s, n);
}

static mode_t current_umask(void) {
    mode_t m = umask(022);
    umask(m);
    return m;
}

static const char *type_name(mode_t m) {
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "dir";
    if (S_ISLNK(m)) return "link";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISSOCK(m)) return "socket";
    if (S_ISCHR(m)) return "char";
    if (S_ISBLK(m)) return "block";
    return "other";
}

/* ---- whole files ---- */

/* One buffer for whole-file reads and copies (the engine has one thread). A 64 KiB box per call
 * cost an allocation, and freeing a chunk that large makes malloc consolidate its free lists. */
static char io_buf[65536];

static int l_read(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(L, "read", path, errno);
    size_t have = 0;               /* small files (most) go from io_buf straight to a string */
    for (;;) {
        ssize_t r = read(fd, io_buf + have, sizeof io_buf - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { int e = errno; close(fd); return fail(L, "read", path, e); }
        if (r == 0) { close(fd); lua_pushlstring(L, io_buf, have); return 1; }
        have += (size_t)r;
        if (have == sizeof io_buf) break;
    }
    lua_pushlstring(L, io_buf, have);   /* copied before anything (a finalizer) can reuse io_buf */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
        char *p = luaL_prepbuffsize(&b, 65536);
        ssize_t r = read(fd, p, 65536);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            luaL_pushresult(&b);
            return fail(L, "read", path, e);
        }
        if (r == 0) break;
        luaL_addsize(&b, (size_t)r);
    }
    close(fd);
    luaL_pushresult(&b);
    lua_concat(L, 2);
    return 1;
}

static int l_write(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return fail(L, "write", path, errno);
    if (write_all(fd, data, n) < 0) { int e = errno; close(fd); return fail(L, "write", path, e); }
    if (close(fd) < 0) return fail(L, "write", path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* Temp file beside the target, write, fsync, rename over the target, fsync the directory: readers
 * see the old or the new content, never a torn file, even after a crash. */
static int l_write_atomic(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    struct stat st;
    mode_t mode = opt_mode(L, 3, stat(path, &st) == 0 ? (st.st_mode & 07777) : (0666 & ~current_umask()));
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!*base) return fail(L, "write", path, EISDIR);
    const char *dir = slash ? lua_pushlstring(L, path, slash == path ? 1 : (size_t)(slash - path))
                            : lua_pushliteral(L, ".");
    char *tmp = scratch_copy(L, lua_pushfstring(L, "%s/.%s.tmp-XXXXXX", dir, base));
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) return fail(L, "create a temporary file in", dir, errno);
    const char *what = NULL;
    if (fchmod(fd, mode) < 0) what = "chmod";
    else if (write_all(fd, data, n) < 0) what = "write";
    else if (fsync(fd) < 0) what = "fsync";
    if (what) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return fail(L, what, path, e);
    }
    if (close(fd) < 0) { int e = errno; unlink(tmp); return fail(L, "write", path, e); }
    if (rename(tmp, path) < 0) { int e = errno; unlink(tmp); return fail(L, "replace", path, e); }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { fsync(dfd); close(dfd); }   /* best effort: the data itself is safe already */
    lua_pushboolean(L, 1);
    return 1;
}

/* One write(2) on an O_APPEND descriptor, so concurrent appenders never interleave a record. */
static int l_append(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    int sync = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "fsync");
        sync = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return fail(L, "append to", path, errno);
    ssize_t w;
    do w = write(fd, data, n); while (w < 0 && errno == EINTR);
    if (w < 0 || (size_t)w != n) {
        int e = w < 0 ? errno : ENOSPC;
        close(fd);
        return fail(L, "append to", path, e);
    }
    if (sync && fsync(fd) < 0) { int e = errno; close(fd); return fail(L, "fsync", path, e); }
    if (close(fd) < 0) return fail(L, "append to", path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- an open file to append to: a journal writes a record per event without an open and a
 * close each time ---- */

#define APPENDER_MT "runbox.fs.appender"

typedef struct { int fd; } appender;

static appender *check_appender(lua_State *L, const char **path) {
    appender *a = luaL_checkudata(L, 1, APPENDER_MT);
    lua_getiuservalue(L, 1, 1);
    *path = lua_tostring(L, -1);
    lua_pop(L, 1);           /* the userdata's user value keeps the string alive */
    return a;
}

/* fs.appender(path) -> a, or nil, err. a:write(data) appends data with one write(2) (as
 * fs.append), a:sync() fsyncs, a:close() closes (also at collection). */
static int l_appender(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return fail(L, "append to", path, errno);
    appender *a = lua_newuserdatauv(L, sizeof *a, 1);
    a->fd = fd;
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, APPENDER_MT);
    return 1;
}

static int appender_write(lua_State *L) {
    const char *path;
    appender *a = check_appender(L, &path);
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    if (a->fd < 0) return fail_msg(L, "closed", path, EBADF, lua_pushfstring(L, "'%s': the appender is closed", path));
    ssize_t w;
    do w = write(a->fd, data, n); while (w < 0 && errno == EINTR);
    if (w < 0 || (size_t)w != n) return fail(L, "append to", path, w < 0 ? errno : ENOSPC);
    lua_pushboolean(L, 1);
    return 1;
}

static int appender_sync(lua_State *L) {
    const char *path;
    appender *a = check_appender(L, &path);
    if (a->fd < 0) return fail_msg(L, "closed", path, EBADF, lua_pushfstring(L, "'%s': the appender is closed", path));
    if (fsync(a->fd) < 0) return fail(L, "fsync", path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int appender_close(lua_State *L) {
    appender *a = luaL_checkudata(L, 1, APPENDER_MT);
    if (a->fd >= 0) { close(a->fd); a->fd = -1; }
    return 0;
}

static int l_copy_file(lua_State *L) {
    const char *src = luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    int nofollow = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "nofollow");
        nofollow = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    /* nofollow: a regular file only, never through a symlink at src and never blocking on a fifo
       (for files an untrusted process may swap) */
    int in = open(src, O_RDONLY | O_CLOEXEC | (nofollow ? O_NOFOLLOW | O_NONBLOCK : 0));
    if (in < 0) return fail(L, "read", src, errno == ELOOP && nofollow ? EPERM : errno);
    struct stat st;
    if (fstat(in, &st) < 0) { int e = errno; close(in); return fail(L, "stat", src, e); }
    if (S_ISDIR(st.st_mode)) { close(in); return fail(L, "copy", src, EISDIR); }
    if (nofollow && !S_ISREG(st.st_mode)) { close(in); return fail(L, "copy", src, EINVAL); }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777);
    if (out < 0) { int e = errno; close(in); return fail(L, "write", dst, e); }
    int e = 0;
    const char *bad = dst;
    while (!e) {
        ssize_t r = read(in, io_buf, sizeof io_buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { e = errno; bad = src; break; }
        if (r == 0) break;
        if (write_all(out, io_buf, (size_t)r) < 0) e = errno;
    }
    close(in);
    if (!e && fchmod(out, st.st_mode & 07777) < 0) e = errno;
    if (close(out) < 0 && !e) e = errno;
    if (e) return fail(L, bad == src ? "read" : "write", bad, e);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- names and metadata ---- */

/* Creates path and its missing parents. The common cases (the folder exists, or only its last
   component is missing) cost one or two syscalls: it walks up only on ENOENT. Returns 1 when it
   made path, 0 when path existed (maybe not as a folder), -1 with errno and path cut after the
   folder that could not be made. */
int rb_make_dirs(char *p, mode_t mode) {
    if (mkdir(p, mode) == 0) return 1;
    if (errno == EEXIST) return 0;
    if (errno != ENOENT) return -1;
    char *slash = strrchr(p, '/');
    if (!slash || slash == p) return -1;
    *slash = 0;
    if (rb_make_dirs(p, mode) < 0) return -1;
    *slash = '/';
    if (mkdir(p, mode) == 0) return 1;
    return errno == EEXIST ? 0 : -1;
}

static int l_mkdir_p(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = opt_mode(L, 2, 0777);
    luaL_argcheck(L, *path, 1, "path must not be empty");
    size_t len = strlen(path);
    char *p = (char *)lua_newuserdatauv(L, len + 1, 0);   /* scratch copy, collected by Lua */
    memcpy(p, path, len + 1);
    while (len > 1 && p[len - 1] == '/') p[--len] = 0;    /* "a/b/" is "a/b" */
    int made = rb_make_dirs(p, mode);
    if (made < 0) {
        int e = errno;
        return fail(L, "create directory", p, e);
    }
    if (!made) {                     /* it was there already: as a folder? */
        struct stat st;
        if (stat(path, &st) < 0) return fail(L, "create directory", path, errno);
        if (!S_ISDIR(st.st_mode)) return fail(L, "create directory", path, ENOTDIR);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_exists(lua_State *L) {
    struct stat st;
    lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
    return 1;
}

static int push_stat(lua_State *L, const struct stat *st) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, type_name(st->st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st->st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, st->st_mode & 07777);
    lua_setfield(L, -2, "mode");
    lua_pushnumber(L, (lua_Number)st->st_mtim.tv_sec + st->st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    return 1;
}

static int l_stat(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) < 0) return fail(L, "stat", path, errno);
    return push_stat(L, &st);
}

static int l_lstat(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) < 0) return fail(L, "stat", path, errno);
    return push_stat(L, &st);
}

/* The kernel's name for the file open on fd (readlink of /proc/self/fd/N); NULL when /proc
 * cannot tell (not mounted, a deleted file, a name longer than the buffer). */
static const char *fd_path(int fd, char *buf, size_t size) {
    char link[32];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, size - 1);
    if (n <= 0 || (size_t)n >= size - 1 || buf[0] != '/') return NULL;
    buf[n] = 0;
    if (n > 10 && !strcmp(buf + n - 10, " (deleted)")) return NULL;
    return buf;
}

/* Three system calls (open, readlink, close) instead of realpath's one per path component. */
static int l_realpath(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    char buf[PATH_MAX];
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) return fail(L, "resolve", path, errno);
    const char *r = fd_path(fd, buf, sizeof buf);
    close(fd);
    if (r) { lua_pushstring(L, r); return 1; }
    char *slow = realpath(path, NULL);
    if (!slow) return fail(L, "resolve", path, errno);
    lua_pushstring(L, slow);
    free(slow);
    return 1;
}

static int l_rename(lua_State *L) {
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    if (rename(from, to) < 0) {
        int e = errno;
        const char *msg = lua_pushfstring(L, "cannot rename '%s' to '%s': %s", from, to, strerror(e));
        return fail_msg(L, reason_of(e), from, e, msg);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_remove(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    if (unlink(path) < 0) {
        if (errno != EISDIR) return fail(L, "remove", path, errno);
        if (rmdir(path) < 0) return fail(L, "remove", path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_symlink(lua_State *L) {
    const char *target = luaL_checkstring(L, 1);
    const char *link = luaL_checkstring(L, 2);
    if (symlink(target, link) < 0) return fail(L, "create symlink", link, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_readlink(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    for (size_t cap = 256; ; cap *= 2) {
        char *buf = (char *)lua_newuserdatauv(L, cap, 0);
        ssize_t n = readlink(path, buf, cap);
        if (n < 0) return fail(L, "read link", path, errno);
        if ((size_t)n < cap) { lua_pushlstring(L, buf, (size_t)n); return 1; }
        lua_pop(L, 1);
    }
}

static int l_chmod(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    luaL_checkany(L, 2);
    if (chmod(path, opt_mode(L, 2, 0)) < 0) return fail(L, "chmod", path, errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_temp_dir(lua_State *L) {
    const char *prefix = luaL_optstring(L, 1, "runbox");
    luaL_argcheck(L, !strchr(prefix, '/'), 1, "prefix must not contain '/'");
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char *tmpl = scratch_copy(L, lua_pushfstring(L, "%s/%s-XXXXXX", base, prefix));
    if (!mkdtemp(tmpl)) return fail(L, "create a temporary directory in", base, errno);
    lua_pushstring(L, tmpl);
    return 1;
}

/* ---- directories ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Pushes the sorted names in dir (without . and ..) as a Lua array; or returns -1 with errno. */
static int push_names(lua_State *L, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    int err = errno;
    closedir(d);
    if (err) { lua_pop(L, 1); errno = err; return -1; }
    /* sort pointers to the (table-anchored) strings, then store them back in order */
    const char **v = (const char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
    for (int i = 0; i < n; i++) { lua_rawgeti(L, -2, i + 1); v[i] = lua_tostring(L, -1); lua_pop(L, 1); }
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) { lua_pushstring(L, v[i]); lua_rawseti(L, -2, i + 1); }
    lua_replace(L, -3);
    lua_pop(L, 1);
    return 0;
}

static int l_list(lua_State *L) {
    const char *dir = luaL_checkstring(L, 1);
    if (push_names(L, dir) < 0) return fail(L, "list", dir, errno);
    return 1;
}

/* Appends {path=, type=} for everything under root/rel to the table at index out (pre-order,
 * siblings sorted). Symlinks are listed, not followed. Returns 0 or -1 with errno, *bad the path. */
static int walk(lua_State *L, int out, lua_Integer *n, const char *root, const char *rel, const char **bad) {
    const char *dir = *rel ? lua_pushfstring(L, "%s/%s", root, rel) : lua_pushstring(L, root);
    if (push_names(L, dir) < 0) { *bad = dir; return -1; }
    int names = lua_gettop(L);
    lua_Integer count = luaL_len(L, names);
    for (lua_Integer i = 1; i <= count; i++) {
        lua_rawgeti(L, names, i);
        const char *name = lua_tostring(L, -1);
        const char *sub = *rel ? lua_pushfstring(L, "%s/%s", rel, name) : lua_pushstring(L, name);
        const char *full = lua_pushfstring(L, "%s/%s", root, sub);
        struct stat st;
        if (lstat(full, &st) < 0) {
            if (errno == ENOENT) { lua_pop(L, 3); continue; }   /* removed while we looked */
            *bad = full;
            return -1;
        }
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "path");
        lua_pushstring(L, type_name(st.st_mode));
        lua_setfield(L, -2, "type");
        lua_rawseti(L, out, ++*n);
        if (S_ISDIR(st.st_mode)) {
            luaL_checkstack(L, 8, "directory tree too deep");
            if (walk(L, out, n, root, sub, bad) < 0) return -1;
        }
        lua_pop(L, 3);
    }
    lua_pop(L, 2);
    return 0;
}

static int l_walk(lua_State *L) {
    const char *root = luaL_checkstring(L, 1);
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_Integer n = 0;
    const char *bad = root;
    if (walk(L, out, &n, root, "", &bad) < 0) {
        int e = errno;
        lua_pushstring(L, bad);
        return fail(L, "walk", lua_tostring(L, -1), e);
    }
    lua_settop(L, out);
    return 1;
}

/* remove_tree: fd-relative, never follows a symlink (O_NOFOLLOW on every directory it opens) and
 * never crosses into another file system (a bind mount inside a sandbox root). path holds the
 * current path for error messages. */
struct rmctx { luaL_Buffer *path; dev_t dev; int err; const char *what; };

static int rm_at(lua_State *L, struct rmctx *c, int dirfd, const char *name, int top);

static int rm_entries(lua_State *L, struct rmctx *c, int fd) {
    DIR *d = fdopendir(fd);
    if (!d) { c->err = errno; close(fd); c->what = "open"; return -1; }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (errno = 0, e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        rc = rm_at(L, c, dirfd(d), e->d_name, 0);
    }
    if (rc == 0 && errno) { c->err = errno; c->what = "list"; rc = -1; }
    closedir(d);
    return rc;
}

static int rm_at(lua_State *L, struct rmctx *c, int dirfd, const char *name, int top) {
    size_t mark = luaL_bufflen(c->path);
    if (!top) luaL_addchar(c->path, '/');
    luaL_addstring(c->path, name);
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) goto done;
        c->err = errno; c->what = "stat"; return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT) {
            /* a read-only directory (e.g. a Go module cache): make it writable and retry */
            if (!(errno == EACCES && dirfd != AT_FDCWD && fchmod(dirfd, 0700) == 0 && unlinkat(dirfd, name, 0) == 0)) {
                c->err = errno; c->what = "remove"; return -1;
            }
        }
        goto done;
    }
    if (st.st_dev != c->dev) { c->err = EXDEV; c->what = "remove"; return -1; }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == EACCES && fchmodat(dirfd, name, 0700, 0) == 0)
        fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) { c->err = errno; c->what = "open"; return -1; }
    luaL_checkstack(L, 4, "directory tree too deep");
    if (rm_entries(L, c, fd) < 0) return -1;
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT) { c->err = errno; c->what = "remove"; return -1; }
done:
    luaL_buffsub(c->path, luaL_bufflen(c->path) - mark);   /* back to the parent's path */
    return 0;
}

static int l_remove_tree(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    if (!*path) return fail_msg(L, "invalid", path, 0, "remove_tree refuses an empty path");
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT) { lua_pushboolean(L, 1); return 1; }   /* like rm -rf */
        return fail(L, "remove", path, errno);
    }
    char *real = realpath(path, NULL);
    int is_root = real && !strcmp(real, "/");
    free(real);
    if (is_root) {
        const char *msg = lua_pushfstring(L, "remove_tree refuses to remove '%s' (the root directory)", path);
        return fail_msg(L, "invalid", path, 0, msg);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    struct rmctx c = {&b, st.st_dev, 0, NULL};
    if (rm_at(L, &c, AT_FDCWD, path, 1) < 0) {
        luaL_pushresult(&b);
        const char *bad = lua_tostring(L, -1);
        if (c.err == EXDEV) {
            const char *msg = lua_pushfstring(L, "remove_tree stops at '%s': another file system is mounted there", bad);
            return fail_msg(L, "invalid", bad, EXDEV, msg);
        }
        return fail(L, c.what, bad, c.err);
    }
    luaL_pushresult(&b);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- locks ---- */

#define LOCK_MT "runbox.fs.lock"

typedef struct { int fd; } fslock;

static int lock_unlock(lua_State *L) {
    fslock *k = luaL_checkudata(L, 1, LOCK_MT);
    if (k->fd >= 0) { close(k->fd); k->fd = -1; }   /* closing the only descriptor drops the flock */
    lua_pushboolean(L, 1);
    return 1;
}

static int lock_tostring(lua_State *L) {
    fslock *k = luaL_checkudata(L, 1, LOCK_MT);
    lua_pushstring(L, k->fd >= 0 ? "fs lock (held)" : "fs lock (released)");
    return 1;
}

static int lock_held(lua_State *L) {
    fslock *k = luaL_checkudata(L, 1, LOCK_MT);
    lua_pushboolean(L, k->fd >= 0);
    return 1;
}

/* flock(LOCK_EX|LOCK_NB) on path (created if missing). The lock dies with the process, so a
 * crashed holder never leaves a stale lock. */
static int l_lock(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    fslock *k = lua_newuserdatauv(L, sizeof *k, 0);
    k->fd = -1;
    luaL_setmetatable(L, LOCK_MT);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) return fail(L, "open lock file", path, errno);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK) {
            const char *msg = lua_pushfstring(L, "cannot lock '%s': locked by another process", path);
            return fail_msg(L, "locked", path, e, msg);
        }
        return fail(L, "lock", path, e);
    }
    k->fd = fd;
    return 1;
}

int luaopen_runbox_fs(lua_State *L) {
    static const luaL_Reg lock_methods[] = {
        {"unlock", lock_unlock}, {"held", lock_held}, {NULL, NULL}};
    static const luaL_Reg f[] = {
        {"read", l_read}, {"write", l_write}, {"write_atomic", l_write_atomic}, {"append", l_append},
        {"copy_file", l_copy_file}, {"mkdir_p", l_mkdir_p}, {"exists", l_exists}, {"stat", l_stat},
        {"lstat", l_lstat}, {"realpath", l_realpath}, {"rename", l_rename}, {"remove", l_remove},
        {"remove_tree", l_remove_tree}, {"symlink", l_symlink}, {"readlink", l_readlink},
        {"chmod", l_chmod}, {"temp_dir", l_temp_dir}, {"list", l_list}, {"walk", l_walk},
        {"lock", l_lock}, {"appender", l_appender}, {NULL, NULL}};
    static const luaL_Reg appender_methods[] = {
        {"write", appender_write}, {"sync", appender_sync}, {"close", appender_close}, {NULL, NULL}};
    rbx_new_class(L, LOCK_MT, lock_methods, lock_unlock, 0);
    luaL_getmetatable(L, LOCK_MT);
    lua_pushcfunction(L, lock_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    rbx_new_class(L, APPENDER_MT, appender_methods, appender_close, 1);   /* failures are errors objects too */
    rbx_newlib_with_errors(L, f, 0);
    return 1;
}
