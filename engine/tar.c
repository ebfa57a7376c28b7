/* runbox.c.tar: tar archives through libarchive.
 *
 * - packer: pull-based. packer:read(n) produces the next bytes of the archive, walking the tree
 *   and copying file data in bounded blocks, so a huge tree never sits in memory and Lua can feed a
 *   pipe at the pace the pipe drains.
 * - unpacker: extracts in bounded steps (unpacker:step(budget)) so the event loop keeps turning;
 *   every entry is checked before anything is written (no absolute paths, no '..', no links that
 *   leave the destination, no device nodes, no setuid bits) on top of libarchive's own
 *   ARCHIVE_EXTRACT_SECURE_* checks.
 * - list: the entries of an archive as Lua tables.
 *
 * Errors are returned to Lua as nil, message[, reason, entry]; the Lua layer (runbox.tar) turns them
 * into error objects. */
#define _GNU_SOURCE
#include "lazy.h"
#include "bytebuf.h"
#include "luax.h"
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <lauxlib.h>
#include <lua.h>

#define PACKER_MT "runbox.tar.packer"
#define UNPACKER_MT "runbox.tar.unpacker"
#define READER_MT "runbox.tar.reader"

#define FILE_BLOCK (64 * 1024)          /* bytes read from a file per step */
#define DEFAULT_CHUNK (256 * 1024)      /* packer:read() default size */

int luaopen_runbox_c_tar(lua_State *L);

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

/* Formats a message into a fresh malloc'd string (NULL when out of memory). */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

static char *join_path(const char *a, const char *b) {
    if (!*a) return strdup(b);
    if (!*b) return strdup(a);
    return fmt("%s/%s", a, b);
}

static void free_strings(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

typedef struct buf byte_buf;
static size_t buf_pending(const byte_buf *b) { return buf_avail(b); }

/* Optional integer field of the table at idx; def when absent. */
static lua_Integer opt_int_field(lua_State *L, int idx, const char *name, lua_Integer def) {
    lua_getfield(L, idx, name);
    lua_Integer v = def;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok) luaL_error(L, "tar: opts.%s must be an integer", name);
    }
    lua_pop(L, 1);
    return v;
}

/* Optional string field; returns a malloc'd copy or NULL. */
static char *opt_str_field(lua_State *L, int idx, const char *name) {
    lua_getfield(L, idx, name);
    char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "tar: opts.%s must be a string", name);
        s = strdup(lua_tostring(L, -1));
    }
    lua_pop(L, 1);
    return s;
}

/* Copies a list of strings at field name (may be absent) into *out. Raises on bad values. */
static size_t str_list_field(lua_State *L, int idx, const char *name, char ***out) {
    *out = NULL;
    lua_getfield(L, idx, name);
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return 0; }
    if (!lua_istable(L, -1)) luaL_error(L, "tar: opts.%s must be a list of strings", name);
    size_t n = (size_t)luaL_len(L, -1);
    char **v = calloc(n + 1, sizeof *v);
    if (!v) luaL_error(L, "tar: out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            free_strings(v, i);
            luaL_error(L, "tar: opts.%s[%d] must be a string", name, (int)i + 1);
        }
        v[i] = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *out = v;
    return n;
}

/* Checks that a relative member path has no '..' and is not absolute. */
static int relative_and_inside(const char *path) {
    if (path[0] == '/') return 0;
    const char *s = path;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') return 0;
        s += n;
        while (*s == '/') s++;
    }
    return 1;
}

/* "./a//b/" -> "a/b" (fresh string). */
static char *clean_relative(const char *path) {
    size_t n = strlen(path);
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    const char *s = path;
    while (*s) {
        while (*s == '/') s++;
        const char *e = s;
        while (*e && *e != '/') e++;
        size_t len = (size_t)(e - s);
        if (len && !(len == 1 && s[0] == '.')) {
            if (o != out) *o++ = '/';
            memcpy(o, s, len);
            o += len;
        }
        s = e;
    }
    *o = 0;
    return out;
}

/* ------------------------------------------------------------------------------------------ */
/* packer */

typedef struct {
    char *glob;
    int dir_only;   /* pattern ended in '/': matches directories only */
    int anchored;   /* pattern has an inner '/': matched against the whole relative path */
} pattern;

typedef struct {
    char **names;   /* sorted entries of the directory, read in one go */
    size_t n, next;
    char *rel;      /* its path relative to the root, "" for the root */
} dir_frame;

enum { P_START, P_WALK, P_DONE };

typedef struct {
    struct archive *a;
    struct archive_entry *entry;
    struct archive_entry_linkresolver *links;
    byte_buf out;
    char *root;
    char *prefix;               /* "" or "name/" */
    pattern *excl;
    size_t nexcl;
    char **files;               /* explicit list (relative to root), or NULL: the whole root */
    size_t nfiles, next_file;
    dir_frame *stack;
    size_t depth, cap;
    int fd;                     /* file whose data is being copied, -1 when none */
    int64_t left;               /* its bytes still to copy */
    char *fd_path;
    char *iobuf;
    char *err;                  /* sticky: once set, the packer only reports it */
    int phase;
    int64_t work;               /* input bytes handled in the current read() call */
} packer;

static int pk_fail(packer *p, char *msg) {
    if (!p->err) p->err = msg ? msg : strdup("out of memory");
    else free(msg);
    return -1;
}

static la_ssize_t pk_write_cb(struct archive *a, void *ud, const void *data, size_t n) {
    packer *p = ud;
    if (buf_add(&p->out, data, n) != 0) {
        archive_set_error(a, ENOMEM, "out of memory");
        return -1;
    }
    return (la_ssize_t)n;
}

static void pk_close_file(packer *p) {
    if (p->fd >= 0) close(p->fd);
    p->fd = -1;
    free(p->fd_path);
    p->fd_path = NULL;
    p->left = 0;
}

static void pk_free(packer *p) {
    pk_close_file(p);
    if (p->a) {
        /* a proper close even when stopped early: only the filters' close releases zlib/zstd
         * state; what it flushes lands in a buffer freed just below */
        archive_write_close(p->a);
        archive_write_free(p->a);
        p->a = NULL;
    }
    if (p->entry) archive_entry_free(p->entry);
    p->entry = NULL;
    if (p->links) archive_entry_linkresolver_free(p->links);
    p->links = NULL;
    while (p->depth > 0) {
        dir_frame *f = &p->stack[--p->depth];
        free_strings(f->names, f->n);
        free(f->rel);
    }
    free(p->stack);
    p->stack = NULL;
    for (size_t i = 0; i < p->nexcl; i++) free(p->excl[i].glob);
    free(p->excl);
    p->excl = NULL;
    p->nexcl = 0;
    free_strings(p->files, p->nfiles);
    p->files = NULL;
    free(p->root);
    free(p->prefix);
    free(p->iobuf);
    free(p->out.p);
    free(p->err);
    p->root = p->prefix = p->iobuf = p->out.p = p->err = NULL;
    p->phase = P_DONE;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a directory's names (sorted, for reproducible archives) onto the walk stack. */
static int pk_push_dir(packer *p, const char *rel, const char *path) {
    DIR *d = opendir(path);
    if (!d) return pk_fail(p, fmt("cannot read directory '%s': %s", path, strerror(errno)));
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) goto oom;
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) goto oom;
        n++;
        errno = 0;
    }
    if (errno) {
        int e = errno;
        closedir(d);
        free_strings(names, n);
        return pk_fail(p, fmt("cannot read directory '%s': %s", path, strerror(e)));
    }
    closedir(d);
    if (n > 1) qsort(names, n, sizeof *names, cmp_names);
    if (p->depth == p->cap) {
        size_t cap2 = p->cap ? p->cap * 2 : 8;
        dir_frame *s = realloc(p->stack, cap2 * sizeof *s);
        if (!s) { free_strings(names, n); return pk_fail(p, NULL); }
        p->stack = s;
        p->cap = cap2;
    }
    char *r = strdup(rel);
    if (!r) { free_strings(names, n); return pk_fail(p, NULL); }
    p->stack[p->depth++] = (dir_frame){names, n, 0, r};
    return 0;
oom:
    closedir(d);
    free_strings(names, n);
    return pk_fail(p, NULL);
}

static int leaf_excluded(const packer *p, const char *rel, int is_dir) {
    const char *name = strrchr(rel, '/');
    name = name ? name + 1 : rel;
    for (size_t i = 0; i < p->nexcl; i++) {
        const pattern *x = &p->excl[i];
        if (x->dir_only && !is_dir) continue;
        if (x->anchored ? fnmatch(x->glob, rel, FNM_PATHNAME) == 0 : fnmatch(x->glob, name, 0) == 0)
            return 1;
    }
    return 0;
}

/* While walking, a directory's ancestors were already checked; an explicit file's were not. */
static int excluded(const packer *p, const char *rel, int is_dir, int explicit_) {
    if (!p->nexcl) return 0;
    if (explicit_) {
        char *tmp = strdup(rel);
        if (!tmp) return 0;
        for (char *s = strchr(tmp, '/'); s; s = strchr(s + 1, '/')) {
            *s = 0;
            int hit = leaf_excluded(p, tmp, 1);
            *s = '/';
            if (hit) { free(tmp); return 1; }
        }
        free(tmp);
    }
    return leaf_excluded(p, rel, is_dir);
}

static int pk_readlink(packer *p, const char *path, size_t hint, char **out) {
    size_t cap = hint + 2 > 64 ? hint + 2 : 64;
    for (;;) {
        char *b = malloc(cap);
        if (!b) return pk_fail(p, NULL);
        ssize_t n = readlink(path, b, cap);
        if (n < 0) {
            free(b);
            return pk_fail(p, fmt("cannot read symlink '%s': %s", path, strerror(errno)));
        }
        if ((size_t)n < cap) { b[n] = 0; *out = b; return 0; }
        free(b);
        cap *= 2;
    }
}

/* Fills the shared entry from stat data: mode, owner ids, size, mtime; no atime/ctime, which
 * would only add pax-style noise and differ between two packs of the same tree. */
static struct archive_entry *pk_entry(packer *p, const char *name, const struct stat *st) {
    struct archive_entry *e = p->entry;
    archive_entry_clear(e);
    archive_entry_set_pathname(e, name);
    archive_entry_copy_stat(e, st);
    archive_entry_unset_atime(e);
    archive_entry_unset_ctime(e);
    archive_entry_unset_birthtime(e);
    if (!S_ISREG(st->st_mode)) archive_entry_set_size(e, 0);
    return e;
}

/* Adds one path (relative to the root) to the archive: header now, data in later steps. */
static int pk_add(packer *p, const char *rel, int explicit_) {
    int rc = 0, fd = -1;
    char *link = NULL, *name = NULL;
    char *path = join_path(p->root, rel);
    if (!path) return pk_fail(p, NULL);
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT && !explicit_) goto out;   /* removed while we were packing */
        rc = pk_fail(p, fmt("cannot read '%s': %s", path, strerror(errno)));
        goto out;
    }
    if (excluded(p, rel, S_ISDIR(st.st_mode), explicit_)) goto out;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) goto out;  /* sockets, fifos, devices */
    if (S_ISREG(st.st_mode)) {
        /* O_NONBLOCK: if a fifo took the file's place since lstat, open must not hang */
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
            if (errno == ENOENT && !explicit_) goto out;
            rc = pk_fail(p, fmt("cannot read '%s': %s", path, strerror(errno)));
            goto out;
        }
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) goto out;
    }
    if (S_ISLNK(st.st_mode) && (rc = pk_readlink(p, path, (size_t)st.st_size, &link)) != 0) goto out;

    if (!(name = fmt("%s%s", p->prefix, rel))) { rc = pk_fail(p, NULL); goto out; }
    struct archive_entry *e = pk_entry(p, name, &st);
    if (link) archive_entry_copy_symlink(e, link);
    if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
        struct archive_entry *spare = NULL;
        archive_entry_linkify(p->links, &e, &spare);   /* a later link becomes a hard-link entry */
    }
    if (archive_write_header(p->a, e) < ARCHIVE_WARN) {
        rc = pk_fail(p, fmt("cannot add '%s' to the archive: %s", path, archive_error_string(p->a)));
        goto out;
    }
    p->work += 512;
    if (S_ISDIR(st.st_mode)) {
        rc = pk_push_dir(p, rel, path);
    } else if (fd >= 0 && !archive_entry_hardlink(e) && st.st_size > 0) {
        p->fd = fd;
        p->left = st.st_size;
        p->fd_path = path;
        fd = -1;
        path = NULL;
    }
out:
    if (fd >= 0) close(fd);
    free(path);
    free(link);
    free(name);
    return rc;
}

/* Copies one block of the current file. A file that shrank meanwhile is padded by libarchive
 * (the header already promised its old size); one that grew is cut at that size. */
static int pk_copy_block(packer *p) {
    size_t want = p->left < FILE_BLOCK ? (size_t)p->left : FILE_BLOCK;
    ssize_t n;
    do n = read(p->fd, p->iobuf, want); while (n < 0 && errno == EINTR);
    if (n < 0) return pk_fail(p, fmt("cannot read '%s': %s", p->fd_path, strerror(errno)));
    if (n == 0) { pk_close_file(p); return 0; }
    if (archive_write_data(p->a, p->iobuf, (size_t)n) < 0)
        return pk_fail(p, fmt("cannot archive '%s': %s", p->fd_path, archive_error_string(p->a)));
    p->left -= n;
    p->work += n;
    if (p->left <= 0) pk_close_file(p);
    return 0;
}

static int pk_start(packer *p) {
    p->phase = P_WALK;
    if (*p->prefix) {   /* the prefix directory itself, with the root's mode and time */
        struct stat st;
        if (stat(p->root, &st) != 0) return pk_fail(p, fmt("cannot read '%s': %s", p->root, strerror(errno)));
        if (archive_write_header(p->a, pk_entry(p, p->prefix, &st)) < ARCHIVE_WARN)
            return pk_fail(p, fmt("cannot add '%s' to the archive: %s", p->prefix, archive_error_string(p->a)));
    }
    if (!p->files) return pk_push_dir(p, "", p->root);
    return 0;
}

/* One unit of work: a block of file data, one entry's header, or the end of the archive. */
static int pk_step(packer *p) {
    if (p->fd >= 0) return pk_copy_block(p);
    if (p->phase == P_START) return pk_start(p);
    while (p->depth > 0) {
        dir_frame *f = &p->stack[p->depth - 1];
        if (f->next < f->n) {
            char *rel = join_path(f->rel, f->names[f->next++]);
            if (!rel) return pk_fail(p, NULL);
            int rc = pk_add(p, rel, 0);
            free(rel);
            return rc;
        }
        free_strings(f->names, f->n);
        free(f->rel);
        p->depth--;
    }
    if (p->files && p->next_file < p->nfiles) return pk_add(p, p->files[p->next_file++], 1);
    p->phase = P_DONE;
    if (archive_write_close(p->a) != ARCHIVE_OK)
        return pk_fail(p, fmt("cannot finish the archive: %s", archive_error_string(p->a)));
    return 0;
}

static packer *check_packer(lua_State *L) { return luaL_checkudata(L, 1, PACKER_MT); }

/* packer:read([n]) -> next bytes of the archive (at most n), or nil at the end, or nil, err. */
static int l_packer_read(lua_State *L) {
    packer *p = check_packer(L);
    lua_Integer n = luaL_optinteger(L, 2, DEFAULT_CHUNK);
    luaL_argcheck(L, n > 0, 2, "chunk size must be positive");
    if (!p->err && !p->a) { p->err = strdup("packer is closed"); }
    /* stop at n output bytes, or after 4n input bytes once there is some output: a tree that
     * compresses very well must not hold the loop until n compressed bytes exist */
    int64_t budget = (int64_t)n * 4;
    p->work = 0;
    while (!p->err && p->phase != P_DONE && buf_pending(&p->out) < (size_t)n) {
        if (pk_step(p) != 0) break;
        if (p->work >= budget && buf_pending(&p->out) > 0) break;
    }
    if (p->err) {
        lua_pushnil(L);
        lua_pushstring(L, p->err);
        return 2;
    }
    size_t have = buf_pending(&p->out);
    if (have == 0) { lua_pushnil(L); return 1; }
    size_t give = have < (size_t)n ? have : (size_t)n;
    lua_pushlstring(L, p->out.p + p->out.off, give);
    p->out.off += give;
    return 1;
}

static int l_packer_close(lua_State *L) {
    pk_free(check_packer(L));
    return 0;
}

/* packer:buffered() -> bytes of memory its output buffer holds (for tests of boundedness). */
static int l_packer_buffered(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)check_packer(L)->out.cap);
    return 1;
}

/* 0, -1 when out of memory, or the 1-based index of an empty pattern. */
static int add_patterns(packer *p, char **globs, size_t n) {
    p->excl = calloc(n ? n : 1, sizeof *p->excl);
    if (!p->excl) return -1;
    for (size_t i = 0; i < n; i++) {
        const char *g = globs[i];
        size_t len = strlen(g);
        pattern *x = &p->excl[p->nexcl];
        while (len > 0 && g[len - 1] == '/') { len--; x->dir_only = 1; }
        while (len > 0 && g[0] == '/') { g++; len--; x->anchored = 1; }
        if (len >= 2 && g[0] == '.' && g[1] == '/') { g += 2; len -= 2; x->anchored = 1; }
        if (len == 0) return (int)i + 1;
        if (memchr(g, '/', len)) x->anchored = 1;
        if (!(x->glob = strndup(g, len))) return -1;
        p->nexcl++;
    }
    return 0;
}

static int setup_filter(lua_State *L, packer *p, const char *compression, lua_Integer level) {
    int rc;
    if (!strcmp(compression, "gzip")) rc = archive_write_add_filter_gzip(p->a);
    else if (!strcmp(compression, "zstd")) rc = archive_write_add_filter_zstd(p->a);
    else if (!strcmp(compression, "none")) rc = archive_write_add_filter_none(p->a);
    else return luaL_error(L, "tar: opts.compression must be \"gzip\", \"zstd\" or \"none\", not \"%s\"", compression);
    if (rc != ARCHIVE_OK)   /* ARCHIVE_WARN would mean an external program: never here */
        return luaL_error(L, "tar: %s compression is not available: %s", compression, archive_error_string(p->a));
    if (strcmp(compression, "none") != 0) {
        char lv[32];
        /* gzip's own default level, so archives match `tar czf` in size and speed */
        snprintf(lv, sizeof lv, "%lld", (long long)(level ? level : !strcmp(compression, "gzip") ? 6 : 3));
        if (archive_write_set_filter_option(p->a, NULL, "compression-level", lv) != ARCHIVE_OK)
            return luaL_error(L, "tar: opts.level %s is out of range for %s", lv, compression);
    }
    return 0;
}

/* ctar.packer{dir=, files=, exclude=, compression=, level=, prefix=} -> packer | nil, err */
static int l_packer(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    packer *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->phase = P_DONE;
    luaL_setmetatable(L, PACKER_MT);   /* from here on __gc frees whatever was set up */

    lua_getfield(L, 1, "dir");
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "tar: opts.dir (the directory to pack) must be a string");
    size_t dlen;
    const char *dir = lua_tolstring(L, -1, &dlen);
    while (dlen > 1 && dir[dlen - 1] == '/') dlen--;
    p->root = strndup(dir, dlen);
    lua_pop(L, 1);

    char *prefix = opt_str_field(L, 1, "prefix");
    if (prefix && *prefix) {
        char *clean = clean_relative(prefix);
        int ok = clean && relative_and_inside(prefix) && *clean;
        free(prefix);
        if (!ok) { free(clean); return luaL_error(L, "tar: opts.prefix must be a relative path without '..'"); }
        p->prefix = fmt("%s/", clean);
        free(clean);
    } else {
        free(prefix);
        p->prefix = strdup("");
    }

    char **globs;
    size_t nglobs = str_list_field(L, 1, "exclude", &globs);
    int rc = add_patterns(p, globs, nglobs);
    free_strings(globs, nglobs);
    if (rc > 0) return luaL_error(L, "tar: opts.exclude[%d] is an empty pattern", rc);

    char **files;
    size_t nfiles = str_list_field(L, 1, "files", &files);
    if (files) {
        p->files = files;
        p->nfiles = nfiles;
        for (size_t i = 0; i < nfiles; i++) {
            if (!relative_and_inside(files[i]))
                return luaL_error(L, "tar: opts.files[%d] '%s' must be relative to opts.dir, without '..'", (int)i + 1, files[i]);
            char *c = clean_relative(files[i]);
            if (!c) return luaL_error(L, "tar: out of memory");
            free(files[i]);
            files[i] = c;
            if (!*c) return luaL_error(L, "tar: opts.files[%d] names the base directory itself; omit files to pack it all", (int)i + 1);
        }
    }

    lua_Integer level = opt_int_field(L, 1, "level", 0);   /* may raise: before the malloc below */
    char *compression = opt_str_field(L, 1, "compression");
    if (rc != 0 || !p->root || !p->prefix) { free(compression); return luaL_error(L, "tar: out of memory"); }

    struct stat st;
    const char *bad = stat(p->root, &st) != 0 ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a directory" : NULL;
    if (bad) {
        free(compression);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot pack '%s': %s", p->root, bad);
        return 2;
    }

    p->a = archive_write_new();
    p->entry = archive_entry_new();
    p->links = archive_entry_linkresolver_new();
    p->iobuf = malloc(FILE_BLOCK);
    if (!p->a || !p->entry || !p->links || !p->iobuf) { free(compression); return luaL_error(L, "tar: out of memory"); }
    /* GNU tar's own format: names are raw bytes (pax would want a locale to convert them) */
    archive_write_set_format_gnutar(p->a);
    archive_entry_linkresolver_set_strategy(p->links, archive_format(p->a));
    archive_write_set_bytes_per_block(p->a, 0);      /* no padding: the stream ends where tar ends */
    lua_pushstring(L, compression ? compression : "gzip");
    free(compression);
    setup_filter(L, p, lua_tostring(L, -1), level);
    lua_pop(L, 1);
    if (archive_write_open(p->a, p, NULL, pk_write_cb, NULL) != ARCHIVE_OK)
        return luaL_error(L, "tar: cannot start the archive: %s", archive_error_string(p->a));
    p->phase = P_START;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* reading archives (shared by list and unpack) */

/* A reader for src = {path=} or {data=}; *label names it in messages (malloc'd). On failure *err
 * (malloc'd) and *reason ("io" or "corrupt") say why. The caller keeps src.data alive while the
 * reader is in use. */
static struct archive *open_source(lua_State *L, int idx, char **label, char **err, const char **reason) {
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "path");
    lua_getfield(L, idx, "data");
    int has_path = lua_type(L, -2) == LUA_TSTRING, has_data = lua_type(L, -1) == LUA_TSTRING;
    if (has_path == has_data) luaL_error(L, "tar: the source must be {path = FILE} or {data = STRING}");
    struct archive *r = archive_read_new();
    if (!r) luaL_error(L, "tar: out of memory");
    archive_read_support_format_tar(r);
    archive_read_support_filter_gzip(r);
    archive_read_support_filter_zstd(r);
    archive_read_support_filter_xz(r);
    archive_read_support_filter_bzip2(r);
    archive_read_support_filter_lz4(r);
    archive_read_support_filter_none(r);
    int rc;
    if (has_path) {
        const char *path = lua_tostring(L, -2);
        *label = fmt("'%s'", path);
        rc = archive_read_open_filename(r, path, 64 * 1024);
    } else {
        size_t len;
        const char *data = lua_tolstring(L, -1, &len);
        *label = fmt("the archive data (%zu bytes)", len);
        rc = archive_read_open_memory(r, data, len);
    }
    lua_pop(L, 2);
    if (rc != ARCHIVE_OK) {
        /* system errors (missing file, no permission) vs. bytes that are no archive we know */
        int e = archive_errno(r);
        *reason = e > 0 && e != EILSEQ && e != EINVAL ? "io" : "corrupt";  /* EILSEQ: libarchive's "bad format" */
        *err = fmt("cannot read %s: %s%s", *label ? *label : "?",
                   !strcmp(*reason, "io") ? "" : "not a readable tar archive: ", archive_error_string(r));
        archive_read_free(r);
        return NULL;
    }
    return r;
}

static const char *type_name(struct archive_entry *e) {
    if (archive_entry_hardlink(e)) return "hardlink";
    switch (archive_entry_filetype(e)) {
    case AE_IFREG: return "file";
    case AE_IFDIR: return "dir";
    case AE_IFLNK: return "symlink";
    case AE_IFCHR: return "chardev";
    case AE_IFBLK: return "blockdev";
    case AE_IFIFO: return "fifo";
    case AE_IFSOCK: return "socket";
    default: return "unknown";
    }
}

/* Holds a reader while Lua code runs (list), so an error there cannot leak it. */
typedef struct { struct archive *r; } reader_box;

static int l_reader_gc(lua_State *L) {
    reader_box *b = luaL_checkudata(L, 1, READER_MT);
    if (b->r) archive_read_free(b->r);
    b->r = NULL;
    return 0;
}

/* ctar.list(src) -> {{path=, size=, type=, mode=, mtime=, linkname=, uid=, gid=}, ...} | nil, err */
static int l_list(lua_State *L) {
    char *label = NULL, *err = NULL;
    const char *reason = "io";
    reader_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->r = NULL;
    luaL_setmetatable(L, READER_MT);
    b->r = open_source(L, 1, &label, &err, &reason);
    if (!b->r) {
        lua_pushnil(L);
        lua_pushstring(L, err ? err : "out of memory");
        lua_pushstring(L, reason);
        free(err);
        free(label);
        return 3;
    }
    lua_newtable(L);
    struct archive_entry *e;
    int rc, n = 0;
    while ((rc = archive_read_next_header(b->r, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        lua_createtable(L, 0, 8);
        lua_pushstring(L, archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
        lua_setfield(L, -2, "path");
        lua_pushinteger(L, archive_entry_size(e));
        lua_setfield(L, -2, "size");
        lua_pushstring(L, type_name(e));
        lua_setfield(L, -2, "type");
        lua_pushinteger(L, archive_entry_perm(e));
        lua_setfield(L, -2, "mode");
        lua_pushinteger(L, archive_entry_mtime(e));
        lua_setfield(L, -2, "mtime");
        lua_pushinteger(L, archive_entry_uid(e));
        lua_setfield(L, -2, "uid");
        lua_pushinteger(L, archive_entry_gid(e));
        lua_setfield(L, -2, "gid");
        const char *link = archive_entry_hardlink(e) ? archive_entry_hardlink(e) : archive_entry_symlink(e);
        if (link) { lua_pushstring(L, link); lua_setfield(L, -2, "linkname"); }
        lua_rawseti(L, -2, ++n);
    }
    if (rc != ARCHIVE_EOF) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot read %s: the archive is damaged: %s", label ? label : "?", archive_error_string(b->r));
        lua_pushstring(L, "corrupt");
        free(label);
        return 3;
    }
    free(label);
    archive_read_free(b->r);
    b->r = NULL;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* unpacker */

enum { U_HEADER, U_DATA, U_DONE, U_FAILED };
enum { OUT_ERROR, OUT_SKIP, OUT_KEEP };

typedef struct {
    struct archive *r, *w;
    int destfd;
    char *label, *dest;
    char *err, *reason, *entry;  /* the failure, once there is one */
    char *cur;                   /* entry whose data is being written */
    int64_t max_entries, max_bytes, entries, bytes;
    int outside_links;           /* OUT_ERROR, OUT_SKIP or OUT_KEEP */
    int state;
} unpacker;

static int up_fail(unpacker *u, const char *reason, const char *entry, char *msg) {
    if (!u->err) {
        u->err = msg ? msg : strdup("out of memory");
        u->reason = strdup(reason);
        u->entry = entry ? strdup(entry) : NULL;
    } else {
        free(msg);
    }
    u->state = U_FAILED;
    return -1;
}

static int up_refuse(unpacker *u, const char *entry, const char *why) {
    return up_fail(u, "unsafe", entry, fmt("cannot unpack %s into '%s': unsafe entry '%s': it %s; unpacking stopped "
                                          "there and nothing was written outside the destination",
                                          u->label, u->dest, entry, why));
}

/* The write side resolves relative names against the working directory, so each step runs with
 * the destination as the working directory and restores the caller's afterwards. */
static int enter_dest(const unpacker *u, int *saved) {
    *saved = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*saved < 0) return -1;
    if (fchdir(u->destfd) != 0) { close(*saved); *saved = -1; return -1; }
    return 0;
}

static void leave_dest(int saved) {
    if (saved < 0) return;
    if (fchdir(saved) != 0) { /* the old directory is gone; nothing better to do */ }
    close(saved);
}

static void up_free(unpacker *u) {
    if (u->w) {
        /* closing applies deferred directory modes and times by relative name: only inside dest */
        int saved;
        if (enter_dest(u, &saved) == 0) {
            archive_write_free(u->w);
            leave_dest(saved);
        } else {
            archive_write_fail(u->w);
            archive_write_free(u->w);
        }
        u->w = NULL;
    }
    if (u->r) archive_read_free(u->r);
    u->r = NULL;
    if (u->destfd >= 0) close(u->destfd);
    u->destfd = -1;
    free(u->label);
    free(u->dest);
    free(u->err);
    free(u->reason);
    free(u->entry);
    free(u->cur);
    u->label = u->dest = u->err = u->reason = u->entry = u->cur = NULL;
    if (u->state != U_DONE) u->state = U_FAILED;
}

/* Symlink targets must stay inside dest by their text alone: relative, and any '..' only at the
 * start and no more of them than the link's depth. A '..' after a name could climb out through a
 * symlinked directory, so it is refused too. */
static const char *symlink_problem(const char *target, int depth) {
    if (!*target) return "is a symlink with an empty target";
    if (target[0] == '/') return "is a symlink to an absolute path (outside the destination)";
    int up = 0, named = 0;
    for (const char *s = target; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            if (named) return "is a symlink whose target has '..' after a name (cannot be checked safely)";
            up++;
        } else if (n && !(n == 1 && s[0] == '.')) {
            named = 1;
        }
        s += n;
        while (*s == '/') s++;
    }
    if (up > depth) return "is a symlink that points outside the destination";
    return NULL;
}

/* Whether a parent directory of a relative path (in the working directory, which is dest) is a
 * symlink: a hard link made through one could reach any file of the file system. */
static int through_symlink(const char *rel) {
    char *p = strdup(rel);
    if (!p) return 1;
    int hit = 0;
    for (char *s = strchr(p, '/'); s && !hit; s = strchr(s + 1, '/')) {
        struct stat st;
        *s = 0;
        hit = lstat(p, &st) == 0 && S_ISLNK(st.st_mode);
        *s = '/';
    }
    free(p);
    return hit;
}

/* Checks one entry and rewrites its names to their clean form. 1: extract, 0: skip, -1: refused. */
static int up_check(unpacker *u, struct archive_entry *e) {
    const char *raw = archive_entry_pathname(e);
    if (!raw || !*raw) return up_refuse(u, "", "has no name");
    if (raw[0] == '/') return up_refuse(u, raw, "has an absolute path");
    if (!relative_and_inside(raw)) return up_refuse(u, raw, "has a '..' path component");
    char *path = clean_relative(raw);
    if (!path) return up_fail(u, "io", raw, NULL);
    if (!*path) { free(path); return 0; }   /* "./": the destination itself, left as it is */
    int depth = 0;
    for (const char *s = path; *s; s++) depth += *s == '/';

    int rc = 1;
    const char *hard = archive_entry_hardlink(e);
    const char *why = NULL;
    char *msg = NULL;
    if (hard) {
        char *clean = NULL;
        if (!*hard || hard[0] == '/' || !relative_and_inside(hard)) {
            msg = fmt("is a hard link to '%s', outside the destination", hard);
        } else if (!(clean = clean_relative(hard))) {
            free(path);
            return up_fail(u, "io", raw, NULL);
        } else if (through_symlink(clean)) {
            msg = fmt("is a hard link to '%s', whose path goes through a symlink", hard);
        } else {
            archive_entry_copy_hardlink(e, clean);
        }
        free(clean);
    } else {
        switch (archive_entry_filetype(e)) {
        case AE_IFREG: case AE_IFDIR: break;
        case AE_IFLNK: {
            const char *t = archive_entry_symlink(e);
            const char *p = symlink_problem(t ? t : "", depth);
            if (p && t && *t && u->outside_links == OUT_SKIP) { free(path); return 0; }
            if (p && t && *t && u->outside_links == OUT_KEEP) p = NULL;  /* libarchive still refuses to write through it */
            if (p) msg = fmt("%s: '%s' (opts.outside_links = \"skip\" leaves such links out)", p, t ? t : "");
            break;
        }
        case AE_IFCHR: why = "is a character device (device nodes are refused)"; break;
        case AE_IFBLK: why = "is a block device (device nodes are refused)"; break;
        case AE_IFIFO: why = "is a FIFO (special files are refused)"; break;
        case AE_IFSOCK: why = "is a socket (special files are refused)"; break;
        default: why = "has an unknown file type"; break;
        }
    }
    if (msg || why) {
        rc = up_refuse(u, raw, msg ? msg : why);
    } else if (u->max_entries > 0 && ++u->entries > u->max_entries) {
        rc = up_fail(u, "limit", raw, fmt("cannot unpack %s into '%s': more than %lld entries (opts.max_entries); stopped at '%s'",
                                         u->label, u->dest, (long long)u->max_entries, raw));
    } else if (u->max_bytes > 0 && (u->bytes += archive_entry_size(e)) > u->max_bytes) {
        rc = up_fail(u, "limit", raw, fmt("cannot unpack %s into '%s': more than %lld bytes of file data (opts.max_bytes); stopped at '%s'",
                                         u->label, u->dest, (long long)u->max_bytes, raw));
    } else {
        archive_entry_set_pathname(e, path);
        archive_entry_set_perm(e, archive_entry_perm(e) & ~(mode_t)(S_ISUID | S_ISGID));
    }
    free(msg);
    free(path);
    return rc;
}

static int up_read_failed(unpacker *u, const char *entry) {
    if (entry)
        return up_fail(u, "corrupt", entry, fmt("cannot unpack %s: the archive is damaged at entry '%s': %s",
                                               u->label, entry, archive_error_string(u->r)));
    return up_fail(u, "corrupt", NULL, fmt("cannot read %s: not a readable tar archive: %s",
                                          u->label, archive_error_string(u->r)));
}

static int up_write_failed(unpacker *u) {
    return up_fail(u, "io", u->cur, fmt("cannot unpack %s into '%s': entry '%s': %s", u->label, u->dest,
                                       u->cur ? u->cur : "?", archive_error_string(u->w)));
}

/* Runs with dest as the working directory. 1: finished, 0: more to do, -1: failed. */
static int up_work(unpacker *u, int64_t budget) {
    int64_t spent = 0;
    while (spent < budget) {
        if (u->state == U_DATA) {
            const void *data;
            size_t size;
            la_int64_t off;
            int rc = archive_read_data_block(u->r, &data, &size, &off);
            if (rc == ARCHIVE_EOF) {
                if (archive_write_finish_entry(u->w) < ARCHIVE_WARN) return up_write_failed(u);
                free(u->cur);
                u->cur = NULL;
                u->state = U_HEADER;
                continue;
            }
            if (rc < ARCHIVE_WARN) return up_read_failed(u, u->cur);
            if (archive_write_data_block(u->w, data, size, off) < ARCHIVE_WARN) return up_write_failed(u);
            spent += (int64_t)size;
            continue;
        }
        struct archive_entry *e;
        int rc = archive_read_next_header(u->r, &e);
        if (rc == ARCHIVE_EOF) {
            if (archive_write_close(u->w) != ARCHIVE_OK)
                return up_fail(u, "io", NULL, fmt("cannot unpack %s into '%s': %s", u->label, u->dest, archive_error_string(u->w)));
            u->state = U_DONE;
            return 1;
        }
        if (rc < ARCHIVE_WARN) return up_read_failed(u, NULL);
        spent += 512;
        char *raw = strdup(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
        if (!raw) return up_fail(u, "io", NULL, NULL);
        int ok = up_check(u, e);
        if (ok <= 0) { free(raw); if (ok < 0) return -1; continue; }
        rc = archive_write_header(u->w, e);
        if (rc < ARCHIVE_WARN) {
            /* libarchive's own guards (a symlink already in the path, ...) fail without a system
             * errno; a full disk or a permission problem comes with one */
            int unsafe = archive_errno(u->w) <= 0;
            char *m = fmt("cannot unpack %s into '%s': %sentry '%s': %s", u->label, u->dest, unsafe ? "unsafe " : "",
                          raw, archive_error_string(u->w));
            up_fail(u, unsafe ? "unsafe" : "io", raw, m);
            free(raw);
            return -1;
        }
        if (archive_entry_size_is_set(e) && archive_entry_size(e) > 0) {
            u->state = U_DATA;
            u->cur = raw;
            raw = NULL;
        } else if (archive_write_finish_entry(u->w) < ARCHIVE_WARN) {
            char *m = fmt("cannot unpack %s into '%s': entry '%s': %s", u->label, u->dest, raw, archive_error_string(u->w));
            up_fail(u, "io", raw, m);
            free(raw);
            return -1;
        }
        free(raw);
    }
    return 0;
}

static unpacker *check_unpacker(lua_State *L) { return luaL_checkudata(L, 1, UNPACKER_MT); }

static int push_up_error(lua_State *L, unpacker *u) {
    lua_pushnil(L);
    lua_pushstring(L, u->err ? u->err : "the unpacker is closed");
    lua_pushstring(L, u->reason ? u->reason : "closed");
    if (u->entry) lua_pushstring(L, u->entry);
    else lua_pushnil(L);
    return 4;
}

/* unpacker:step([budget]) -> true (finished) | false (call again) | nil, err, reason, entry */
static int l_unpacker_step(lua_State *L) {
    unpacker *u = check_unpacker(L);
    lua_Integer budget = luaL_optinteger(L, 2, 4 * 1024 * 1024);
    if (u->state == U_DONE) { lua_pushboolean(L, 1); return 1; }
    if (u->state == U_FAILED || !u->w) return push_up_error(L, u);
    int saved;
    if (enter_dest(u, &saved) != 0) {
        up_fail(u, "io", NULL, fmt("cannot unpack into '%s': %s", u->dest, strerror(errno)));
        return push_up_error(L, u);
    }
    int rc = up_work(u, budget > 0 ? budget : 1);
    leave_dest(saved);
    if (rc < 0) return push_up_error(L, u);
    lua_pushboolean(L, rc == 1);
    return 1;
}

static int l_unpacker_close(lua_State *L) {
    up_free(check_unpacker(L));
    return 0;
}

/* mkdir -p with the process umask; then opens it. */
static int open_dest(const char *dest) {
    char *p = strdup(dest);
    if (!p) { errno = ENOMEM; return -1; }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) { int e = errno; free(p); errno = e; return -1; }
        *s = '/';
    }
    if (mkdir(p, 0777) != 0 && errno != EEXIST) { int e = errno; free(p); errno = e; return -1; }
    free(p);
    return open(dest, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

/* ctar.unpacker(src, dest [, opts]) -> unpacker | nil, err, reason */
static int l_unpacker(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *dest = luaL_checkstring(L, 2);
    if (!*dest) return luaL_argerror(L, 2, "destination must not be empty");
    int has_opts = !lua_isnoneornil(L, 3);
    if (has_opts) luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer max_entries = has_opts ? opt_int_field(L, 3, "max_entries", 0) : 0;
    lua_Integer max_bytes = has_opts ? opt_int_field(L, 3, "max_bytes", 0) : 0;
    int outside = OUT_ERROR;
    if (has_opts) {
        lua_getfield(L, 3, "outside_links");
        const char *ol = lua_tostring(L, -1);
        if (ol && !strcmp(ol, "skip")) outside = OUT_SKIP;
        else if (ol && !strcmp(ol, "keep")) outside = OUT_KEEP;
        else if (!lua_isnil(L, -1) && !(ol && !strcmp(ol, "error")))
            return luaL_error(L, "tar: opts.outside_links must be \"error\", \"skip\" or \"keep\"");
        lua_pop(L, 1);
    }

    unpacker *u = lua_newuserdatauv(L, sizeof *u, 1);
    memset(u, 0, sizeof *u);
    u->destfd = -1;
    u->state = U_FAILED;
    luaL_setmetatable(L, UNPACKER_MT);
    lua_getfield(L, 1, "data");
    lua_setiuservalue(L, -2, 1);   /* keeps the archive string alive as long as the reader */
    u->max_entries = max_entries;
    u->max_bytes = max_bytes;
    u->outside_links = outside;
    if (!(u->dest = strdup(dest))) return luaL_error(L, "tar: out of memory");

    char *err = NULL;
    const char *reason = "io";
    u->r = open_source(L, 1, &u->label, &err, &reason);
    if (!u->r) {
        lua_pushnil(L);
        lua_pushstring(L, err ? err : "out of memory");
        lua_pushstring(L, reason);
        free(err);
        return 3;
    }
    if ((u->destfd = open_dest(dest)) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot unpack into '%s': %s", dest, strerror(errno));
        lua_pushstring(L, "io");
        return 3;
    }
    if (!(u->w = archive_write_disk_new())) return luaL_error(L, "tar: out of memory");
    archive_write_disk_set_options(u->w, ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                             ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS | ARCHIVE_EXTRACT_PERM |
                                             ARCHIVE_EXTRACT_TIME);
    u->state = U_HEADER;
    return 1;
}

/* ctar.unpack(src, dest [, opts]) -> true | nil, err, reason, entry: the whole archive at once. */
static int l_unpack(lua_State *L) {
    lua_settop(L, 3);
    int n = l_unpacker(L);
    if (n != 1) return n;
    unpacker *u = lua_touserdata(L, -1);
    int saved, rc;
    if (enter_dest(u, &saved) != 0)
        rc = up_fail(u, "io", NULL, fmt("cannot unpack into '%s': %s", u->dest, strerror(errno)));
    else {
        rc = up_work(u, INT64_MAX);
        leave_dest(saved);
    }
    if (rc < 0) {
        n = push_up_error(L, u);
        up_free(u);
        return n;
    }
    up_free(u);
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */

/* ctar.tempfile(prefix [, mode]) -> path of a new empty file named prefix..XXXXXX | nil, err */
static int l_tempfile(lua_State *L) {
    const char *prefix = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_optinteger(L, 2, 0600);
    luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode must be a permission number");
    char *path = fmt("%sXXXXXX", prefix);
    if (!path) return luaL_error(L, "tar: out of memory");
    int fd = mkstemp(path);
    if (fd < 0) {
        int e = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "cannot create a temporary file '%s': %s", path, strerror(e));
        free(path);
        return 2;
    }
    if (mode != 0600) fchmod(fd, (mode_t)mode);
    close(fd);
    lua_pushstring(L, path);
    free(path);
    return 1;
}

static int l_packer_gc(lua_State *L) { return l_packer_close(L); }
static int l_unpacker_gc(lua_State *L) { return l_unpacker_close(L); }

int luaopen_runbox_c_tar(lua_State *L) {
    char lazy_err[1024];    /* libarchive is loaded here, not at start-up (lazy.h) */
    if (rb_lazy_archive_load(lazy_err, sizeof lazy_err) != 0) return luaL_error(L, "%s", lazy_err);
    static const luaL_Reg packer_methods[] = {{"read", l_packer_read}, {"close", l_packer_close}, {"buffered", l_packer_buffered}, {NULL, NULL}};
    static const luaL_Reg unpacker_methods[] = {{"step", l_unpacker_step}, {"close", l_unpacker_close}, {NULL, NULL}};
    static const luaL_Reg none[] = {{NULL, NULL}};
    static const luaL_Reg fns[] = {
        {"packer", l_packer}, {"unpacker", l_unpacker}, {"unpack", l_unpack}, {"list", l_list}, {"tempfile", l_tempfile}, {NULL, NULL}};
    rbx_new_class(L, PACKER_MT, packer_methods, l_packer_gc, 0);
    rbx_new_class(L, UNPACKER_MT, unpacker_methods, l_unpacker_gc, 0);
    rbx_new_class(L, READER_MT, none, l_reader_gc, 0);
    luaL_newlib(L, fns);
    return 1;
}
