/* runbox.util: clocks, ids, SHA-256, base64, environment and .env files. See util.h and
 * docs/api/util.md. Failures on outside data return nil, err (a runbox.errors object). */
#define _GNU_SOURCE
#include "util.h"
#include "luax.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>

extern char **environ;

#define ERRORS_NEW lua_upvalueindex(1)   /* runbox.errors.new, an upvalue of every function */

/* Pushes nil and errors.new(code, message [, {path=, reason=}]); returns 2. */
static int fail(lua_State *L, const char *code, const char *path, const char *msg, const char *reason) {
    lua_pushnil(L);
    lua_pushvalue(L, ERRORS_NEW);
    lua_pushstring(L, code);
    lua_pushstring(L, msg);
    lua_createtable(L, 0, 2);
    if (path) { lua_pushstring(L, path); lua_setfield(L, -2, "path"); }
    if (reason) { lua_pushstring(L, reason); lua_setfield(L, -2, "reason"); }
    lua_call(L, 3, 1);
    return 2;
}

/* File errors look like runbox.fs's: code "fs", reason not_found | permission | io. */
static int fail_errno(lua_State *L, const char *what, const char *path, int e) {
    const char *msg = lua_pushfstring(L, "cannot %s '%s': %s", what, path, strerror(e));
    fail(L, "fs", path, msg, e == ENOENT ? "not_found" : e == EACCES ? "permission" : "io");
    lua_remove(L, -3);
    return 2;
}

/* ---- SHA-256, written from FIPS 180-4 ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

void rb_sha256_init(rb_sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->bytes = 0;
    c->used = 0;
}

void rb_sha256_update(rb_sha256_ctx *c, const void *data, size_t n) {
    const unsigned char *p = data;
    c->bytes += n;
    if (c->used) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take; p += take; n -= take;
        if (c->used < 64) return;
        sha256_block(c->h, c->block);
        c->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha256_block(c->h, p);
    memcpy(c->block, p, n);
    c->used = n;
}

void rb_sha256_final(rb_sha256_ctx *c, unsigned char out[32]) {
    uint64_t bits = c->bytes * 8;
    c->block[c->used++] = 0x80;
    if (c->used > 56) {
        memset(c->block + c->used, 0, 64 - c->used);
        sha256_block(c->h, c->block);
        c->used = 0;
    }
    memset(c->block + c->used, 0, 56 - c->used);
    for (int i = 0; i < 8; i++) c->block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_block(c->h, c->block);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(c->h[i] >> (24 - 8 * j));
}

static void push_hex(lua_State *L, const unsigned char *p, size_t n) {
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;
    char *s = luaL_buffinitsize(L, &b, 2 * n);
    for (size_t i = 0; i < n; i++) { s[2 * i] = digits[p[i] >> 4]; s[2 * i + 1] = digits[p[i] & 15]; }
    luaL_pushresultsize(&b, 2 * n);
}

static int l_sha256(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    rb_sha256_ctx c;
    unsigned char out[32];
    rb_sha256_init(&c);
    rb_sha256_update(&c, s, n);
    rb_sha256_final(&c, out);
    push_hex(L, out, 32);
    return 1;
}

static int l_sha256_file(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno(L, "read", path, errno);
    char *buf = lua_newuserdatauv(L, 65536, 0);
    rb_sha256_ctx c;
    rb_sha256_init(&c);
    for (;;) {
        ssize_t r = read(fd, buf, 65536);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { int e = errno; close(fd); return fail_errno(L, "read", path, e); }
        if (r == 0) break;
        rb_sha256_update(&c, buf, (size_t)r);
    }
    close(fd);
    unsigned char out[32];
    rb_sha256_final(&c, out);
    push_hex(L, out, 32);
    return 1;
}

/* ---- randomness and ids ---- */

int rb_random_bytes(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        p += r; n -= (size_t)r;
    }
    return 0;
}

static void random_or_raise(lua_State *L, void *buf, size_t n) {
    if (rb_random_bytes(buf, n) < 0) luaL_error(L, "getrandom failed: %s", strerror(errno));
}

static int l_uuid(lua_State *L) {
    unsigned char b[16];
    random_or_raise(L, b, sizeof b);
    b[6] = (b[6] & 0x0f) | 0x40;   /* version 4 */
    b[8] = (b[8] & 0x3f) | 0x80;   /* RFC 4122 variant */
    static const char digits[] = "0123456789abcdef";
    char s[37];
    int j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) s[j++] = '-';
        s[j++] = digits[b[i] >> 4];
        s[j++] = digits[b[i] & 15];
    }
    lua_pushlstring(L, s, 36);
    return 1;
}

/* n random hex characters. */
static void push_random_hex(lua_State *L, size_t n) {
    unsigned char *b = lua_newuserdatauv(L, n / 2 + 1, 0);
    random_or_raise(L, b, n / 2 + 1);
    push_hex(L, b, n / 2 + 1);
    lua_pushlstring(L, lua_tostring(L, -1), n);
    lua_replace(L, -3);
    lua_pop(L, 1);
}

static int l_random_hex(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= (1 << 24), 1, "length must be between 0 and 16777216");
    push_random_hex(L, (size_t)n);
    return 1;
}

/* ---- clocks ---- */

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int l_time(lua_State *L) { lua_pushnumber(L, clock_seconds(CLOCK_REALTIME)); return 1; }
static int l_monotonic(lua_State *L) { lua_pushnumber(L, clock_seconds(CLOCK_MONOTONIC)); return 1; }

/* Formats t (seconds since the epoch, UTC) with strftime format fmt. */
static void push_utc(lua_State *L, double t, const char *fmt) {
    if (!isfinite(t) || t < -6e10 || t > 2.5e11) luaL_error(L, "time %f is out of range", t);
    time_t secs = (time_t)floor(t);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char s[64];
    size_t n = strftime(s, sizeof s, fmt, &tm);
    lua_pushlstring(L, s, n);
}

static int l_iso8601(lua_State *L) {
    double t = lua_isnoneornil(L, 1) ? clock_seconds(CLOCK_REALTIME) : luaL_checknumber(L, 1);
    push_utc(L, t, "%Y-%m-%dT%H:%M:%SZ");
    return 1;
}

/* Suffixes handed out during the current second, so one process never repeats an id (24 random
 * bits alone collide within a few thousand ids). Grows to the most ids made in one second. */
static struct { time_t sec; uint32_t *used; size_t n, cap; } issued;

static int suffix_is_new(time_t sec, uint32_t v) {
    if (sec != issued.sec) { issued.sec = sec; issued.n = 0; }
    for (size_t i = 0; i < issued.n; i++) if (issued.used[i] == v) return 0;
    if (issued.n == issued.cap) {
        size_t cap = issued.cap ? issued.cap * 2 : 64;
        uint32_t *p = realloc(issued.used, cap * sizeof *p);
        if (!p) return 1;   /* cannot remember: the suffix is still random */
        issued.used = p;
        issued.cap = cap;
    }
    issued.used[issued.n++] = v;
    return 1;
}

/* run_id([parent]): "YYYYmmdd_HHMMSS_xxxxxx" (UTC). Unique within the process; with parent, also
 * creates parent/<id> with mkdir, which fails on an existing name, so two processes can never share
 * a run folder either: a collision just draws a new suffix. Returns id [, path]. */
static int l_run_id(lua_State *L) {
    const char *parent = luaL_optstring(L, 1, NULL);
    for (int attempt = 0; attempt < 1000; attempt++) {
        lua_settop(L, 1);
        double now = clock_seconds(CLOCK_REALTIME);
        unsigned char b[3];
        random_or_raise(L, b, sizeof b);
        uint32_t v = (uint32_t)b[0] << 16 | (uint32_t)b[1] << 8 | b[2];
        if (!suffix_is_new((time_t)floor(now), v)) continue;
        push_utc(L, now, "%Y%m%d_%H%M%S_");
        push_hex(L, b, sizeof b);
        lua_concat(L, 2);
        if (!parent) return 1;
        const char *path = lua_pushfstring(L, "%s/%s", parent, lua_tostring(L, -1));
        if (mkdir(path, 0777) == 0) return 2;
        if (errno != EEXIST) return fail_errno(L, "create run directory", path, errno);
    }
    return luaL_error(L, "run_id: no free name found (more than a million runs in one second?)");
}

/* ---- base64 (RFC 4648, standard alphabet, padded) ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int l_base64_encode(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    size_t out = (n + 2) / 3 * 4;
    luaL_Buffer b;
    char *d = luaL_buffinitsize(L, &b, out ? out : 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
        d[j++] = B64[v >> 18];
        d[j++] = B64[(v >> 12) & 63];
        d[j++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        d[j++] = i + 2 < n ? B64[v & 63] : '=';
    }
    luaL_pushresultsize(&b, j);
    return 1;
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Whitespace (line breaks of wrapped base64) is skipped; anything else outside the alphabet, a
 * length that is not a multiple of 4, or misplaced padding is an error. */
static int l_base64_decode(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *d = luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
    size_t j = 0, count = 0, pad = 0;
    uint32_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        const char *why = NULL;
        int v = b64_value(c);
        if (c == '=') {
            if (count % 4 < 2) why = "misplaced '=' padding";
            pad++;
            v = 0;
        } else if (v < 0) why = "a character outside the base64 alphabet";
        else if (pad) why = "data after '=' padding";
        if (why) {
            luaL_pushresultsize(&b, 0);
            const char *msg = lua_pushfstring(L, "invalid base64: %s at byte %d", why, (int)i + 1);
            return fail(L, "base64", NULL, msg, NULL);
        }
        acc = acc << 6 | (uint32_t)v;
        if (++count % 4 == 0) {
            d[j++] = (char)(acc >> 16);
            if (pad < 2) d[j++] = (char)(acc >> 8);
            if (pad < 1) d[j++] = (char)acc;
            acc = 0;
        }
    }
    if (count % 4 != 0) {
        luaL_pushresultsize(&b, 0);
        return fail(L, "base64", NULL, "invalid base64: the length is not a multiple of 4 (missing '=' padding?)", NULL);
    }
    luaL_pushresultsize(&b, j);
    return 1;
}

/* ---- environment ---- */

static int l_getenv(lua_State *L) {
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v) lua_pushstring(L, v); else lua_pushnil(L);
    return 1;
}

static int l_env(lua_State *L) {
    lua_newtable(L);
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq) continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_hostname(lua_State *L) {
    struct utsname u;
    if (uname(&u) < 0) return luaL_error(L, "uname failed: %s", strerror(errno));
    lua_pushstring(L, u.nodename);
    return 1;
}

static int l_pid(lua_State *L) { lua_pushinteger(L, getpid()); return 1; }

/* ---- .env files ---- */

struct dotenv { const char *s, *end, *path; int line; const char *err; int err_line; };

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }
static int is_key_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
static int is_key_char(char c) { return is_key_start(c) || (c >= '0' && c <= '9'); }

static void skip_blanks(struct dotenv *p) { while (p->s < p->end && is_blank(*p->s)) p->s++; }

/* After a value: blanks, an optional # comment, then the end of the line. */
static int end_of_line(struct dotenv *p) {
    skip_blanks(p);
    if (p->s < p->end && *p->s == '#') while (p->s < p->end && *p->s != '\n') p->s++;
    if (p->s < p->end && *p->s != '\n') return 0;
    if (p->s < p->end) { p->s++; p->line++; }
    return 1;
}

/* Quoted value (the opening quote already consumed) into b. Double quotes know \n \r \t \" \\ \$;
 * single quotes take everything literally. Either may span lines. */
static int quoted(struct dotenv *p, luaL_Buffer *b, char q) {
    int start = p->line;
    while (p->s < p->end && *p->s != q) {
        char c = *p->s++;
        if (c == '\n') p->line++;
        if (c == '\\' && q == '"' && p->s < p->end) {
            char e = *p->s++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case '"': case '\\': case '$': c = e; break;
            default: luaL_addchar(b, '\\'); c = e; if (e == '\n') p->line++;
            }
        }
        luaL_addchar(b, c);
    }
    if (p->s >= p->end) {
        p->err = q == '"' ? "unterminated double-quoted value" : "unterminated single-quoted value";
        p->err_line = start;
        return 0;
    }
    p->s++;
    return 1;
}

/* Parses one KEY=VALUE line (or a blank/comment line) and, for a value, sets it in the table on top
 * of the stack. Returns 0 on a syntax error (p->err set). */
static int dotenv_line(lua_State *L, struct dotenv *p) {
    skip_blanks(p);
    if (p->s >= p->end) return 1;
    if (*p->s == '#' || *p->s == '\n') return end_of_line(p);
    if (p->end - p->s > 7 && !memcmp(p->s, "export", 6) && is_blank(p->s[6])) { p->s += 7; skip_blanks(p); }
    const char *key = p->s;
    if (p->s >= p->end || !is_key_start(*p->s)) { p->err = "expected KEY=VALUE"; p->err_line = p->line; return 0; }
    while (p->s < p->end && is_key_char(*p->s)) p->s++;
    size_t klen = (size_t)(p->s - key);
    skip_blanks(p);
    if (p->s >= p->end || *p->s != '=') { p->err = "expected '=' after the name"; p->err_line = p->line; return 0; }
    p->s++;
    skip_blanks(p);
    lua_pushlstring(L, key, klen);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int line = p->line;
    if (p->s < p->end && (*p->s == '"' || *p->s == '\'')) {
        char q = *p->s++;
        if (!quoted(p, &b, q)) { luaL_pushresult(&b); lua_pop(L, 2); return 0; }
        if (!end_of_line(p)) {
            luaL_pushresult(&b); lua_pop(L, 2);
            p->err = "unexpected text after the closing quote"; p->err_line = line;
            return 0;
        }
    } else {
        /* unquoted: up to the end of the line or a # that follows a blank; trailing blanks trimmed */
        const char *v = p->s, *stop = p->s;
        while (p->s < p->end && *p->s != '\n') {
            if (*p->s == '#' && (p->s == v || is_blank(p->s[-1]))) break;
            p->s++;
            if (!is_blank(p->s[-1])) stop = p->s;
        }
        luaL_addlstring(&b, v, (size_t)(stop - v));
        end_of_line(p);
    }
    luaL_pushresult(&b);
    size_t vlen;
    const char *val = lua_tolstring(L, -1, &vlen);
    if (memchr(val, 0, vlen)) {
        lua_pop(L, 2);
        p->err = "the value contains a NUL byte"; p->err_line = line;
        return 0;
    }
    lua_rawset(L, -3);
    return 1;
}

/* load_dotenv(path [, {apply=false, override=false}]) -> table of what the file sets. Values
 * never appear in error messages (they are usually secrets). */
static int l_load_dotenv(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int apply = 0, override = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "apply");
        apply = lua_toboolean(L, -1);
        lua_getfield(L, 2, "override");
        override = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lua_settop(L, 1);
    if (!rbx_read_file(L, 1)) return 2;   /* nil, err from fs.read names the file */
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    struct dotenv p = {s, s + n, path, 1, NULL, 0};
    lua_newtable(L);
    int out = lua_gettop(L);
    while (p.s < p.end) {
        if (!dotenv_line(L, &p)) {
            const char *msg = lua_pushfstring(L, "%s:%d: %s", path, p.err_line, p.err);
            fail(L, "dotenv", path, msg, NULL);
            lua_pushinteger(L, p.err_line);
            lua_setfield(L, -2, "line");
            return 2;
        }
    }
    if (apply) {
        lua_pushnil(L);
        while (lua_next(L, out)) {
            const char *k = lua_tostring(L, -2);
            if (override || !getenv(k)) {
                if (setenv(k, lua_tostring(L, -1), 1) < 0) return fail_errno(L, "setenv", k, errno);
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, out);
    return 1;
}

int luaopen_runbox_util(lua_State *L) {
    static const luaL_Reg f[] = {
        {"time", l_time}, {"monotonic", l_monotonic}, {"iso8601", l_iso8601}, {"uuid", l_uuid},
        {"random_hex", l_random_hex}, {"sha256", l_sha256}, {"sha256_file", l_sha256_file},
        {"base64_encode", l_base64_encode}, {"base64_decode", l_base64_decode}, {"getenv", l_getenv},
        {"env", l_env}, {"load_dotenv", l_load_dotenv}, {"hostname", l_hostname}, {"pid", l_pid},
        {"run_id", l_run_id}, {NULL, NULL}};
    rbx_newlib_with_errors(L, f, 0);
    return 1;
}
