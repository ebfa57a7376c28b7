/* runbox.c.log: log sinks, secret redaction and stream pumps.
 *
 * A sink is an fd (an O_APPEND log file, or stdout/stderr) with an optional per-line prefix. Every
 * write() carries whole lines only, so streams sharing a sink never interleave inside a line (the
 * engine is single-threaded: a batch is fully written before anything else runs).
 *
 * Registered secrets are replaced by "***" in every line written through any sink. Redaction works on
 * complete lines only, so a secret that arrives split across two reads is still caught.
 *
 * A pump copies a non-blocking fd into sinks: each step reads what is available in big blocks,
 * writes the complete lines in one batch per sink and keeps the unterminated tail for the next step.
 * Lua never touches the lines. See lua/runbox/log.lua and docs/api/log.md. */
#define _GNU_SOURCE   /* memmem, memrchr, F_SETPIPE_SZ */
#include "fs.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>

#define SINK_MT "runbox.log.sink"
#define PUMP_MT "runbox.log.pump"
#define ANCHOR_MT "runbox.log.anchor"

enum {
    MIN_SECRET = 6,                 /* shorter values would blank out ordinary words */
    BLOCK = 256 * 1024,             /* read size */
    STEP_BUDGET = 8 * 1024 * 1024,  /* bytes per step before other tasks get a turn */
    MAX_LINE = 1024 * 1024,         /* default cut length of a line */
    KEEP_MAX = 4096,                /* bytes kept of a line for last_line/tail */
};

static const char CUT_MARK[] = " [runbox: line cut]";
static const char MASK[] = "***";

/* ---- growable byte buffers; allocation failure is reported, never a longjmp mid-work ---- */

typedef struct { char *p; size_t len, cap; } buf;

static int buf_reserve(buf *b, size_t need) {
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p; b->cap = cap;
    return 0;
}

static void buf_put(buf *b, const void *p, size_t n) {   /* caller reserved the room */
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_free(buf *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

/* ---- the redaction list: one per process, like the secrets it protects ---- */

typedef struct { char *s; size_t len; } secret;
static secret *secrets;
static int nsecrets, capsecrets;

static void free_secrets(void) {
    for (int i = 0; i < nsecrets; i++) free(secrets[i].s);
    free(secrets);
    secrets = NULL; nsecrets = capsecrets = 0;
}

/* 1 added, 0 already known, -1 no memory */
static int add_secret(const char *s, size_t len) {
    for (int i = 0; i < nsecrets; i++)
        if (secrets[i].len == len && !memcmp(secrets[i].s, s, len)) return 0;
    if (nsecrets == capsecrets) {
        int cap = capsecrets ? capsecrets * 2 : 8;
        secret *n = realloc(secrets, (size_t)cap * sizeof *n);
        if (!n) return -1;
        secrets = n; capsecrets = cap;
    }
    char *copy = malloc(len);
    if (!copy) return -1;
    memcpy(copy, s, len);
    secrets[nsecrets++] = (secret){copy, len};
    return 1;
}

typedef struct { size_t a, b; } span;    /* [a, b) of a secret in a region */
typedef struct { span *v; size_t n, cap; } spans;

static int spans_add(spans *s, size_t a, size_t b) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return -1;
        s->v = v; s->cap = cap;
    }
    s->v[s->n++] = (span){a, b};
    return 0;
}

static int span_cmp(const void *x, const void *y) {
    const span *a = x, *b = y;
    return a->a < b->a ? -1 : a->a > b->a ? 1 : 0;
}

/* Finds every secret in region; overlapping hits merge into one span. Secrets hold no newline, so
 * a hit never crosses a line and searching the whole region equals searching line by line. */
static int find_secrets(const char *r, size_t len, spans *out) {
    out->n = 0;
    for (int i = 0; i < nsecrets; i++) {
        const char *p = r, *end = r + len;
        const char *q;
        while ((q = memmem(p, (size_t)(end - p), secrets[i].s, secrets[i].len))) {
            if (spans_add(out, (size_t)(q - r), (size_t)(q - r) + secrets[i].len) < 0) return -1;
            p = q + secrets[i].len;
        }
    }
    if (out->n < 2 || nsecrets < 2) return 0;
    qsort(out->v, out->n, sizeof *out->v, span_cmp);
    size_t k = 0;
    for (size_t i = 1; i < out->n; i++) {
        if (out->v[i].a < out->v[k].b) { if (out->v[i].b > out->v[k].b) out->v[k].b = out->v[i].b; }
        else out->v[++k] = out->v[i];
    }
    out->n = k + 1;
    return 0;
}

/* Region with its secrets masked, into out. */
static int mask_spans(const char *r, size_t len, const spans *s, buf *out) {
    out->len = 0;
    if (buf_reserve(out, len + s->n * sizeof MASK) < 0) return -1;
    size_t pos = 0;
    for (size_t i = 0; i < s->n; i++) {
        buf_put(out, r + pos, s->v[i].a - pos);
        buf_put(out, MASK, sizeof MASK - 1);
        pos = s->v[i].b;
    }
    buf_put(out, r + pos, len - pos);
    return 0;
}

/* Scratch space for rendering: per pump, and one shared by clog.write. */
typedef struct { spans sp; buf red, out; } work;

static void work_free(work *w) { free(w->sp.v); w->sp = (spans){0}; buf_free(&w->red); buf_free(&w->out); }

/* The region (complete lines) with secrets masked: either r itself or w->red. */
static const char *redacted(work *w, const char *r, size_t *len) {
    if (!nsecrets) return r;
    if (find_secrets(r, *len, &w->sp) < 0) return NULL;
    if (!w->sp.n) return r;
    if (mask_spans(r, *len, &w->sp, &w->red) < 0) return NULL;
    *len = w->red.len;
    return w->red.p;
}

/* Newlines in p[0..n), 16 bytes at a time with GCC vector extensions (SSE2 or NEON code): a hot
 * spot otherwise, as it runs over every byte of every stream. */
typedef unsigned char v16 __attribute__((vector_size(16)));
typedef signed char v16s __attribute__((vector_size(16)));

static uint64_t count_newlines(const char *p, size_t n) {
    const v16 nl = (v16){0} + '\n';
    uint64_t c = 0;
    size_t i = 0;
    while (n - i >= 32) {
        size_t rounds = (n - i) / 32;
        if (rounds > 127) rounds = 127;       /* byte counters (two adds a round) must not wrap */
        v16 acc = {0};
        for (size_t r = 0; r < rounds; r++, i += 32) {
            v16 a, b;
            memcpy(&a, p + i, 16);
            memcpy(&b, p + i + 16, 16);
            acc -= (v16)(v16s)(a == nl);      /* -1 in each lane that matched */
            acc -= (v16)(v16s)(b == nl);
        }
        for (int k = 0; k < 16; k++) c += acc[k];
    }
    for (; i < n; i++) c += p[i] == '\n';
    return c;
}

/* ---- sinks ---- */

typedef struct {
    int fd;
    bool owned;
    char *prefix;      /* with colour codes when coloured */
    size_t prefix_len;
    char *name;        /* path or "stderr", for messages */
    char *err;         /* first write error; the sink writes nothing after it */
} sink;

static const struct { const char *name; int code; } colours[] = {
    {"red", 31}, {"green", 32}, {"yellow", 33}, {"blue", 34}, {"magenta", 35}, {"cyan", 36},
    {"white", 37}, {"gray", 90}, {"grey", 90}, {"bright_red", 91}, {"bright_green", 92},
    {"bright_yellow", 93}, {"bright_blue", 94}, {"bright_magenta", 95}, {"bright_cyan", 96},
    {NULL, 0}};

/* SGR parameters of opts.color ("cyan" or 0..255), or NULL for none. Raises on a bad value. */
static const char *colour_sgr(lua_State *L, int opts, char *tmp, size_t tmpsz) {
    lua_getfield(L, opts, "color");
    int t = lua_type(L, -1);
    const char *r = NULL;
    if (t == LUA_TNUMBER) {
        lua_Integer n = lua_tointeger(L, -1);
        if (!lua_isinteger(L, -1) || n < 0 || n > 255) luaL_error(L, "log sink: color must be 0..255 or a name");
        snprintf(tmp, tmpsz, "38;5;%d", (int)n);
        r = tmp;
    } else if (t == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        for (int i = 0; colours[i].name; i++)
            if (!strcmp(s, colours[i].name)) { snprintf(tmp, tmpsz, "%d", colours[i].code); r = tmp; }
        if (!r) luaL_error(L, "log sink: unknown color '%s' (use red, green, yellow, blue, magenta, cyan, "
                              "white, gray, bright_<name>, or 0..255)", s);
    } else if (t != LUA_TNIL && !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        luaL_error(L, "log sink: color must be a name, a number or false");
    }
    lua_pop(L, 1);
    return r;
}

/* Fills in prefix and colour from the options table at index opts (may be absent). */
static void sink_setup(lua_State *L, sink *s, int opts) {
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    lua_getfield(L, opts, "prefix");
    size_t plen = 0;
    const char *prefix = lua_isnil(L, -1) ? "" : luaL_checklstring(L, -1, &plen);
    if (memchr(prefix, '\n', plen)) luaL_error(L, "log sink: prefix must not contain a newline");
    char tmp[32];
    const char *sgr = colour_sgr(L, opts, tmp, sizeof tmp);
    lua_getfield(L, opts, "force_color");
    bool force = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (sgr && !force && !isatty(s->fd)) sgr = NULL;   /* colour codes are for terminals only */
    if (plen) {
        size_t extra = sgr ? strlen(sgr) + 3 + 4 : 0;    /* ESC [ sgr m ... ESC [ 0 m */
        s->prefix = malloc(plen + extra + 1);
        if (!s->prefix) luaL_error(L, "out of memory");
        if (sgr) snprintf(s->prefix, plen + extra + 1, "\x1b[%sm%.*s\x1b[0m", sgr, (int)plen, prefix);
        else memcpy(s->prefix, prefix, plen);
        s->prefix_len = plen + extra;
    }
    lua_pop(L, 1);
}

static sink *new_sink(lua_State *L, int fd, bool owned, const char *name) {
    sink *s = lua_newuserdatauv(L, sizeof *s, 0);
    *s = (sink){.fd = fd, .owned = owned};
    luaL_setmetatable(L, SINK_MT);     /* from here on __gc closes the fd */
    s->name = strdup(name);
    if (!s->name) luaL_error(L, "out of memory");
    return s;
}

static sink *check_sink(lua_State *L, int i) { return luaL_checkudata(L, i, SINK_MT); }

static void sink_fail(sink *s, const char *why) {
    if (s->err) return;
    size_t n = strlen(s->name) + strlen(why) + 32;
    s->err = malloc(n);
    if (s->err) snprintf(s->err, n, "writing log %s: %s", s->name, why);
}

static const char *sink_error(sink *s) { return s->err ? s->err : "writing log: out of memory"; }

/* Writes all of p (whole lines). A console whose fd is non-blocking is waited for with poll: only
 * terminals and pipes the user chose for the console get this; log files are regular files. */
static int write_all(sink *s, const char *p, size_t n) {
    if (s->err) return -1;
    if (s->fd < 0) { sink_fail(s, "the sink is closed"); return -1; }
    while (n) {
        ssize_t w = write(s->fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd pf = {s->fd, POLLOUT, 0}; poll(&pf, 1, -1); continue; }
            sink_fail(s, strerror(errno));
            return -1;
        }
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* Writes region (complete lines, already redacted) to s, with its prefix on every line. */
static int sink_emit(sink *s, work *w, const char *r, size_t len, uint64_t lines) {
    if (!s->prefix_len) return write_all(s, r, len);
    if (s->err) return -1;
    w->out.len = 0;
    if (buf_reserve(&w->out, len + lines * s->prefix_len) < 0) { sink_fail(s, "out of memory"); return -1; }
    const char *p = r, *end = r + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)(nl - p) + 1;
        buf_put(&w->out, s->prefix, s->prefix_len);
        buf_put(&w->out, p, n);
        p += n;
    }
    return write_all(s, w->out.p, w->out.len);
}

static void sink_close(sink *s) {
    if (s->owned && s->fd >= 0) close(s->fd);
    s->fd = -1;
}

static int sink_gc(lua_State *L) {
    sink *s = check_sink(L, 1);
    sink_close(s);
    free(s->prefix); free(s->name); free(s->err);
    s->prefix = s->name = s->err = NULL;
    return 0;
}

static int l_sink_close(lua_State *L) { sink_close(check_sink(L, 1)); return 0; }

static int l_sink_name(lua_State *L) { lua_pushstring(L, check_sink(L, 1)->name); return 1; }

static int l_sink_error(lua_State *L) {
    sink *s = check_sink(L, 1);
    if (s->err) lua_pushstring(L, s->err); else lua_pushnil(L);
    return 1;
}

static int l_sink_isatty(lua_State *L) {
    sink *s = check_sink(L, 1);
    lua_pushboolean(L, s->fd >= 0 && isatty(s->fd));
    return 1;
}

/* clog.open(path, opts) -> sink | nil, message. opts: prefix, color, force_color, mkdir (true:
 * create missing folders). The file is opened for appending and created if needed. */
static int l_open(lua_State *L) {
    lua_settop(L, 2);                 /* opts stays at 2 (nil when absent) above the pushes */
    const char *path = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    if (!*path) return luaL_argerror(L, 1, "empty path");
    bool mk = false;
    if (lua_istable(L, 2)) { lua_getfield(L, 2, "mkdir"); mk = lua_toboolean(L, -1); lua_pop(L, 1); }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && errno == ENOENT && mk) {    /* folders made only when missing: no walk per open */
        char *dir = strdup(path);
        if (!dir) return luaL_error(L, "out of memory");
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            if (rb_make_dirs(dir, 0777) < 0) {
                lua_pushnil(L);
                lua_pushfstring(L, "cannot create folder %s for log file %s: %s", dir, path, strerror(errno));
                free(dir);
                return 2;
            }
        }
        free(dir);
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    }
    if (fd < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot open log file %s: %s", path, strerror(errno));
        return 2;
    }
    sink *s = new_sink(L, fd, true, path);
    sink_setup(L, s, 2);
    return 1;
}

/* clog.fdsink(fd, opts) -> sink writing to an fd it does not own (1 for stdout, 2 for stderr). */
static int l_fdsink(lua_State *L) {
    lua_settop(L, 2);
    lua_Integer fd = luaL_checkinteger(L, 1);
    if (fd < 0 || fd > 0x7fffffff) return luaL_argerror(L, 1, "not an fd");
    const char *name = fd == 1 ? "stdout" : fd == 2 ? "stderr" : lua_pushfstring(L, "fd %d", (int)fd);
    sink *s = new_sink(L, (int)fd, false, name);
    sink_setup(L, s, 2);
    return 1;
}

/* Sinks argument: one sink or a list of them. Pushes a fresh list table; returns its length. */
static int sink_list(lua_State *L, int i) {
    lua_newtable(L);
    if (luaL_testudata(L, i, SINK_MT)) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, 1);
        return 1;
    }
    luaL_argexpected(L, lua_istable(L, i), i, "log sink or list of sinks");
    int n = (int)luaL_len(L, i);
    for (int k = 1; k <= n; k++) {
        lua_geti(L, i, k);
        if (!luaL_testudata(L, -1, SINK_MT)) luaL_error(L, "bad sink #%d in the sink list", k);
        lua_rawseti(L, -2, k);
    }
    return n;
}

/* ---- clog.write, clog.redact, clog.scrub ---- */

static work shared_work;   /* for clog.write and clog.scrub; freed with the module anchor */

/* clog.write(sinks, text) -> true | nil, message. Text is one or more lines; a missing final
 * newline is added. Every sink is tried even after one fails. */
static int l_write(lua_State *L) {
    lua_settop(L, 2);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    int n = sink_list(L, 1);
    int list = lua_gettop(L);
    if (!len || text[len - 1] != '\n') {       /* the text as whole lines */
        lua_pushlstring(L, text, len);
        lua_pushliteral(L, "\n");
        lua_concat(L, 2);
        text = lua_tolstring(L, -1, &len);
    }
    size_t rlen = len;
    const char *r = redacted(&shared_work, text, &rlen);
    if (!r) return luaL_error(L, "out of memory");
    uint64_t lines = count_newlines(r, rlen);
    const char *err = NULL;
    for (int k = 1; k <= n; k++) {
        lua_rawgeti(L, list, k);
        sink *s = lua_touserdata(L, -1);
        if (sink_emit(s, &shared_work, r, rlen, lines) < 0 && !err) err = sink_error(s);
        lua_pop(L, 1);
    }
    if (err) { lua_pushnil(L); lua_pushstring(L, err); return 2; }
    lua_pushboolean(L, 1);
    return 1;
}

/* clog.redact(secret) -> true | nil, message. A value with several lines registers each line
 * (log output is matched line by line); lines shorter than MIN_SECRET are skipped. */
static int l_redact(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int added = 0, longest = 0;
    const char *p = s, *end = s + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r') n--;
        if ((int)n > longest) longest = (int)n;
        if (n >= MIN_SECRET) {
            int rc = add_secret(p, n);
            if (rc < 0) return luaL_error(L, "out of memory");
            added++;
        }
        p = nl ? nl + 1 : end;
    }
    if (!added) {
        lua_pushnil(L);
        lua_pushfstring(L, "not redacting a value of %d bytes: values shorter than %d bytes are ignored "
                           "(they would mask ordinary text)", longest, MIN_SECRET);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* clog.scrub(text) -> text with every registered secret masked (for messages and result files). */
static int l_scrub(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *r = redacted(&shared_work, text, &len);
    if (!r) return luaL_error(L, "out of memory");
    if (r != text) lua_pushlstring(L, r, len); else lua_settop(L, 1);
    return 1;
}

static int l_secret_count(lua_State *L) { lua_pushinteger(L, nsecrets); return 1; }

/* clog.stamp() -> "YYYY-MM-DD HH:MM:SS.mmm" local time. */
static int l_stamp(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char out[64];
    size_t n = strftime(out, sizeof out, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out + n, sizeof out - n, ".%03ld", ts.tv_nsec / 1000000);
    lua_pushstring(L, out);
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* ---- pumps ---- */

typedef struct {
    int fd;
    bool close_fd, eof;
    buf in;                 /* bytes read but not written: the unterminated tail */
    size_t max_line;
    uint64_t bytes, lines;
    int nsinks;
    sink **sinks;           /* anchored by the list table in user value 1 */
    buf last;               /* last complete line, redacted, without its newline */
    buf *ring;              /* opts.keep last lines */
    int keep, ring_n, ring_next;
    work w;
    buf cut;                /* a cut piece of a long line with its marker */
    char *err;              /* first sink error */
} pump;

static pump *check_pump(lua_State *L, int i) { return luaL_checkudata(L, i, PUMP_MT); }

/* Keeps s[0..n) (one line, no newline) capped at KEEP_MAX in b. */
static void keep_line(buf *b, const char *s, size_t n) {
    if (n > KEEP_MAX) n = KEEP_MAX;
    b->len = 0;
    if (buf_reserve(b, n + 1) == 0) buf_put(b, s, n);
}

/* Updates last line and the ring from an emitted region (complete lines). */
static void remember(pump *p, const char *r, size_t len) {
    const char *end = r + len - 1;     /* the final newline */
    const char *nl = end > r ? memrchr(r, '\n', (size_t)(end - r)) : NULL;
    const char *last = nl ? nl + 1 : r;
    keep_line(&p->last, last, (size_t)(end - last));
    if (!p->keep) return;
    /* start of the keep-th line from the end, then forward into the ring, oldest first */
    const char *start = last;
    for (int n = 1; n < p->keep && start > r; n++) {
        nl = start - 1 > r ? memrchr(r, '\n', (size_t)(start - 1 - r)) : NULL;
        start = nl ? nl + 1 : r;
    }
    while (start <= end) {
        const char *e = memchr(start, '\n', (size_t)(end - start) + 1);
        keep_line(&p->ring[p->ring_next], start, (size_t)(e - start));
        p->ring_next = (p->ring_next + 1) % p->keep;
        if (p->ring_n < p->keep) p->ring_n++;
        start = e + 1;
    }
}

/* Writes complete lines r[0..len) to every sink, redacted. */
static int pump_emit(pump *p, const char *r, size_t len) {
    if (!len) return 0;
    size_t rlen = len;
    const char *red = redacted(&p->w, r, &rlen);
    if (!red) return -1;
    uint64_t lines = count_newlines(red, rlen);
    p->lines += lines;
    for (int k = 0; k < p->nsinks; k++) {
        sink *s = p->sinks[k];
        if (sink_emit(s, &p->w, red, rlen, lines) < 0 && !p->err) p->err = strdup(sink_error(s));
    }
    remember(p, red, rlen);
    return 0;
}

/* Where to cut a line longer than max_line: at max_line, or earlier so that no secret starts
 * before the cut and ends after it (the continuation then holds the whole secret). */
static size_t cut_point(const char *s, size_t c) {
    size_t best = c;
    for (int i = 0; i < nsecrets; i++) {
        size_t sl = secrets[i].len;
        for (size_t k = c > sl - 1 ? c - (sl - 1) : 0; k < c; k++)
            if (!memcmp(s + k, secrets[i].s, c - k)) { if (k < best) best = k; break; }
    }
    return best ? best : c;
}

/* Emits the first piece of the over-long line at s, with the cut marker; returns its length. */
static size_t pump_cut(pump *p, const char *s, int *failed) {
    size_t c = cut_point(s, p->max_line);
    p->cut.len = 0;
    if (buf_reserve(&p->cut, c + sizeof CUT_MARK + 1) < 0) { *failed = 1; return c; }
    buf_put(&p->cut, s, c);
    buf_put(&p->cut, CUT_MARK, sizeof CUT_MARK - 1);
    buf_put(&p->cut, "\n", 1);
    if (pump_emit(p, p->cut.p, p->cut.len) < 0) *failed = 1;
    return c;
}

/* Writes the complete lines of p->in (cutting over-long ones) and keeps the tail. */
static int pump_drain(pump *p) {
    char *b = p->in.p;
    size_t len = p->in.len, pos = 0, run = 0;
    int failed = 0;
    if (len <= p->max_line) {          /* no line can be too long: one batch up to the last newline */
        const char *nl = memrchr(b, '\n', len);
        pos = nl ? (size_t)(nl - b) + 1 : 0;
    } else {
        while (pos < len && !failed) {
            size_t lim = len - pos <= p->max_line ? len - pos : p->max_line + 1;
            const char *nl = memchr(b + pos, '\n', lim);
            if (nl) { pos = (size_t)(nl - b) + 1; continue; }
            if (len - pos <= p->max_line) break;         /* an unterminated tail, not too long yet */
            if (pump_emit(p, b + run, pos - run) < 0) return -1;
            pos += pump_cut(p, b + pos, &failed);
            run = pos;
        }
    }
    if (failed || pump_emit(p, b + run, pos - run) < 0) return -1;
    memmove(b, b + pos, len - pos);
    p->in.len = len - pos;
    return 0;
}

/* Writes the tail as a last line (at the end of the stream). */
static int pump_flush_tail(pump *p) {
    if (!p->in.len) return 0;
    if (buf_reserve(&p->in, p->in.len + 1) < 0) return -1;
    p->in.p[p->in.len++] = '\n';
    int rc = pump_emit(p, p->in.p, p->in.len);
    p->in.len = 0;
    return rc;
}

static void pump_close_fd(pump *p) {
    if (p->close_fd && p->fd >= 0) { rb_forget_fd(p->fd); close(p->fd); }
    p->fd = -1;
}

static int oom(lua_State *L) { lua_pushnil(L); lua_pushliteral(L, "log pump: out of memory"); return 2; }

/* pump:step() -> "again" | "eof" | nil, message. Copies what the fd has now (up to a budget, so a
 * fast producer cannot starve other tasks; "again" then means: wait for the fd, it is ready). */
static int l_pump_step(lua_State *L) {
    pump *p = check_pump(L, 1);
    if (p->eof) { lua_pushliteral(L, "eof"); return 1; }
    size_t budget = STEP_BUDGET;
    while (budget) {
        if (buf_reserve(&p->in, p->in.len + BLOCK) < 0) return oom(L);
        ssize_t n = read(p->fd, p->in.p + p->in.len, BLOCK);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            int e = errno;
            lua_pushnil(L);
            lua_pushfstring(L, "log pump: reading fd %d: %s", p->fd, strerror(e));
            return 2;
        }
        if (n == 0) {
            p->eof = true;
            int rc = pump_flush_tail(p);
            pump_close_fd(p);
            if (rc < 0) return oom(L);
            lua_pushliteral(L, "eof");
            return 1;
        }
        p->in.len += (size_t)n;
        p->bytes += (uint64_t)n;
        budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
        if (pump_drain(p) < 0) return oom(L);
    }
    lua_pushliteral(L, "again");
    return 1;
}

/* pump:finish(): the stream ends here (cancelled, or its fd closed elsewhere): writes the tail. */
static int l_pump_finish(lua_State *L) {
    pump *p = check_pump(L, 1);
    if (!p->eof) {
        p->eof = true;
        int rc = pump_flush_tail(p);
        pump_close_fd(p);
        if (rc < 0) return oom(L);
    }
    return 0;
}

static int l_pump_counts(lua_State *L) {
    pump *p = check_pump(L, 1);
    lua_pushinteger(L, (lua_Integer)p->bytes);
    lua_pushinteger(L, (lua_Integer)p->lines);
    return 2;
}

static int l_pump_last_line(lua_State *L) {
    pump *p = check_pump(L, 1);
    if (!p->lines) { lua_pushnil(L); return 1; }
    /* what a terminal would show: the text after the last carriage return */
    const char *s = p->last.p ? p->last.p : "";
    size_t n = p->last.len;
    while (n && s[n - 1] == '\r') n--;
    const char *cr = memrchr(s, '\r', n);
    if (cr) { n -= (size_t)(cr + 1 - s); s = cr + 1; }
    lua_pushlstring(L, s, n);
    return 1;
}

static int l_pump_tail(lua_State *L) {
    pump *p = check_pump(L, 1);
    lua_createtable(L, p->ring_n, 0);
    for (int i = 0; i < p->ring_n; i++) {
        int k = (p->ring_next - p->ring_n + i + p->keep) % (p->keep ? p->keep : 1);
        lua_pushlstring(L, p->ring[k].p ? p->ring[k].p : "", p->ring[k].len);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_pump_fd(lua_State *L) {
    pump *p = check_pump(L, 1);
    if (p->fd < 0) lua_pushnil(L); else lua_pushinteger(L, p->fd);
    return 1;
}

static int l_pump_error(lua_State *L) {
    pump *p = check_pump(L, 1);
    if (p->err) lua_pushstring(L, p->err); else lua_pushnil(L);
    return 1;
}

static int pump_gc(lua_State *L) {
    pump *p = check_pump(L, 1);
    pump_close_fd(p);
    buf_free(&p->in); buf_free(&p->last); buf_free(&p->cut);
    for (int i = 0; i < p->keep; i++) buf_free(&p->ring[i]);
    free(p->ring); free(p->sinks); free(p->err);
    p->ring = NULL; p->sinks = NULL; p->err = NULL; p->keep = 0;
    work_free(&p->w);
    return 0;
}

static lua_Integer opt_int(lua_State *L, int t, const char *k, lua_Integer def, lua_Integer lo, lua_Integer hi) {
    if (lua_isnoneornil(L, t)) return def;
    lua_getfield(L, t, k);
    lua_Integer v = def;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < lo || v > hi) luaL_error(L, "log pump: %s must be an integer in %d..%d", k, (int)lo, (int)hi);
    }
    lua_pop(L, 1);
    return v;
}

/* clog.pump(fd, sinks, opts) -> pump. The fd must be non-blocking. opts: keep (lines kept for
 * tail()), max_line (bytes before a line is cut, default 1 MiB), close (close the fd at the end),
 * pipe_size (ask for this pipe buffer size). */
static int l_pump(lua_State *L) {
    lua_settop(L, 3);
    lua_Integer fd = luaL_checkinteger(L, 1);
    if (fd < 0 || fd > 0x7fffffff) return luaL_argerror(L, 1, "not an fd");
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    int keep = (int)opt_int(L, 3, "keep", 0, 0, 10000);
    size_t max_line = (size_t)opt_int(L, 3, "max_line", MAX_LINE, 64, 1 << 30);
    bool close_fd = false;
    if (lua_istable(L, 3)) { lua_getfield(L, 3, "close"); close_fd = lua_toboolean(L, -1); lua_pop(L, 1); }
    int n = sink_list(L, 2);
    int list = lua_gettop(L);
    pump *p = lua_newuserdatauv(L, sizeof *p, 1);
    *p = (pump){.fd = -1};
    luaL_setmetatable(L, PUMP_MT);
    lua_pushvalue(L, list);
    lua_setiuservalue(L, -2, 1);
    p->sinks = calloc((size_t)(n ? n : 1), sizeof *p->sinks);
    p->ring = calloc((size_t)(keep ? keep : 1), sizeof *p->ring);
    if (!p->sinks || !p->ring) return luaL_error(L, "out of memory");
    p->keep = keep;
    p->nsinks = n;
    for (int k = 0; k < n; k++) {
        lua_rawgeti(L, list, k + 1);
        p->sinks[k] = lua_touserdata(L, -1);
        lua_pop(L, 1);
    }
    p->max_line = max_line;
    p->fd = (int)fd;
    p->close_fd = close_fd;
    /* Off by default: measured no gain, and big pipes count against the user's pipe-user-pages-soft
     * limit, past which every new pipe of the user gets only two pages. Fails harmlessly on non-pipes. */
    int pipe_size = (int)opt_int(L, 3, "pipe_size", 0, 0, 1 << 30);
    if (pipe_size > 0) fcntl(p->fd, F_SETPIPE_SZ, pipe_size);
    return 1;
}

/* ---- module ---- */

static int anchor_gc(lua_State *L) {
    free_secrets();
    work_free(&shared_work);
    return 0;
}

int luaopen_runbox_c_log(lua_State *L) {
    static const luaL_Reg sink_methods[] = {
        {"close", l_sink_close}, {"name", l_sink_name}, {"error", l_sink_error},
        {"isatty", l_sink_isatty}, {NULL, NULL}};
    static const luaL_Reg pump_methods[] = {
        {"step", l_pump_step}, {"finish", l_pump_finish}, {"counts", l_pump_counts},
        {"last_line", l_pump_last_line}, {"tail", l_pump_tail}, {"fd", l_pump_fd},
        {"error", l_pump_error}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"open", l_open}, {"fdsink", l_fdsink}, {"write", l_write}, {"redact", l_redact},
        {"scrub", l_scrub}, {"secret_count", l_secret_count}, {"stamp", l_stamp},
        {"isatty", l_isatty}, {"pump", l_pump}, {NULL, NULL}};

    luaL_newmetatable(L, SINK_MT);
    luaL_newlib(L, sink_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sink_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, PUMP_MT);
    luaL_newlib(L, pump_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pump_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    /* the process-wide redaction list is freed when the state closes */
    if (luaL_newmetatable(L, ANCHOR_MT)) {
        lua_pushcfunction(L, anchor_gc);
        lua_setfield(L, -2, "__gc");
        lua_newuserdatauv(L, 1, 0);
        lua_pushvalue(L, -2);
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, "runbox.log.anchor_obj");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushinteger(L, MIN_SECRET);
    lua_setfield(L, -2, "min_secret");
    return 1;
}
