/* runbox.json. See json.h and docs/api/json.md.
 *
 * Why not lua-cjson's own codec: Debian's lua-cjson 2.1.0 predates Lua 5.3 integers. It decodes
 * every number as a float (1 becomes 1.0), prints numbers with at most 14 significant digits (so
 * integers past 10^14 come out rounded, in exponent form), cannot tell [] from {} after decoding and
 * has no way to encode an empty array. This file is a small strict RFC 8259 codec instead; its null
 * is the same value as cjson.null (a NULL light userdata).
 *
 * Decoding never raises on bad input: it returns nil, err with the line, column and byte offset.
 * Encoding raises on values JSON cannot hold, naming where in the value they are ($.a.b[2]). */
#define _GNU_SOURCE
#include "json.h"
#include "luax.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>

#define ERRORS_NEW lua_upvalueindex(1)   /* runbox.errors.new */
#define MARKS lua_upvalueindex(2)        /* weak-keyed set of tables marked as arrays */
#define MAX_DEPTH 1000                   /* nesting limit both ways; catches reference cycles */
#define SPARSE_RATIO 2                   /* {[1]=a, [5]=b} is an array (holes as null) unless ... */
#define SPARSE_SAFE 10                   /* ... max index > 10 and > 2 * number of items */

static int push_error(lua_State *L, const char *code, const char *msg) {
    lua_pushnil(L);
    lua_pushvalue(L, ERRORS_NEW);
    lua_pushstring(L, code);
    lua_pushstring(L, msg);
    lua_call(L, 2, 1);
    return 2;
}

/* ================================================================================================
 * decoding */

typedef struct {
    lua_State *L;
    const char *start, *p, *end;
    int depth;
    const char *err;      /* problem, when decoding failed */
    const char *err_at;
} decoder;

static int dec_fail(decoder *d, const char *at, const char *why) {
    if (!d->err) { d->err = why; d->err_at = at; }
    return -1;
}

static void skip_ws(decoder *d) {
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t')) d->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
    if (cp < 0x80) luaL_addchar(b, (char)cp);
    else if (cp < 0x800) {
        luaL_addchar(b, (char)(0xc0 | cp >> 6));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        luaL_addchar(b, (char)(0xe0 | cp >> 12));
        luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    } else {
        luaL_addchar(b, (char)(0xf0 | cp >> 18));
        luaL_addchar(b, (char)(0x80 | ((cp >> 12) & 0x3f)));
        luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
        luaL_addchar(b, (char)(0x80 | (cp & 0x3f)));
    }
}

/* \uXXXX (d->p just after the 'u'); a surrogate pair makes one code point, a lone surrogate
 * becomes U+FFFD (it has no UTF-8 form). */
static int unicode_escape(decoder *d, luaL_Buffer *b) {
    unsigned cp, lo;
    if (d->end - d->p < 4 || hex4(d->p, &cp) < 0) return dec_fail(d, d->p - 2, "invalid \\u escape (needs 4 hex digits)");
    d->p += 4;
    if (cp >= 0xd800 && cp <= 0xdbff && d->end - d->p >= 6 && d->p[0] == '\\' && d->p[1] == 'u' &&
        hex4(d->p + 2, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        d->p += 6;
    } else if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
    add_utf8(b, cp);
    return 0;
}

/* A string (d->p at the opening quote) pushed on the Lua stack. */
static int dec_string(decoder *d) {
    const char *open = d->p++;
    const char *run = d->p;
    while (d->p < d->end && *d->p != '"' && *d->p != '\\' && (unsigned char)*d->p >= 0x20) d->p++;
    if (d->p < d->end && *d->p == '"') {   /* common case: no escapes */
        lua_pushlstring(d->L, run, (size_t)(d->p - run));
        d->p++;
        return 0;
    }
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    luaL_addlstring(&b, run, (size_t)(d->p - run));
    while (d->p < d->end) {
        unsigned char c = (unsigned char)*d->p;
        if (c == '"') { d->p++; luaL_pushresult(&b); return 0; }
        if (c < 0x20) { luaL_pushresult(&b); return dec_fail(d, d->p, "control character in a string (escape it as \\n, \\t or \\u00XX)"); }
        if (c != '\\') { luaL_addchar(&b, (char)c); d->p++; continue; }
        if (d->p + 1 >= d->end) break;
        char e = d->p[1];
        d->p += 2;
        switch (e) {
        case '"': luaL_addchar(&b, '"'); break;
        case '\\': luaL_addchar(&b, '\\'); break;
        case '/': luaL_addchar(&b, '/'); break;
        case 'b': luaL_addchar(&b, '\b'); break;
        case 'f': luaL_addchar(&b, '\f'); break;
        case 'n': luaL_addchar(&b, '\n'); break;
        case 'r': luaL_addchar(&b, '\r'); break;
        case 't': luaL_addchar(&b, '\t'); break;
        case 'u':
            if (unicode_escape(d, &b) < 0) { luaL_pushresult(&b); return -1; }
            break;
        default: luaL_pushresult(&b); return dec_fail(d, d->p - 2, "invalid escape in a string");
        }
    }
    luaL_pushresult(&b);
    return dec_fail(d, open, "unterminated string");
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? ; integers that fit in 64 bits stay integers. */
static int dec_number(decoder *d) {
    const char *s = d->p, *p = d->p;
    int neg = 0, is_float = 0;
    if (*p == '-') { neg = 1; p++; }
    if (p >= d->end || !is_digit(*p)) return dec_fail(d, s, "invalid number");
    if (*p == '0' && p + 1 < d->end && is_digit(p[1])) return dec_fail(d, s, "invalid number (leading zero)");
    uint64_t mag = 0;
    int overflow = 0;
    for (; p < d->end && is_digit(*p); p++) {
        unsigned dig = (unsigned)(*p - '0');
        if (mag > (UINT64_MAX - dig) / 10) overflow = 1;
        else mag = mag * 10 + dig;
    }
    if (p < d->end && *p == '.') {
        is_float = 1;
        p++;
        if (p >= d->end || !is_digit(*p)) return dec_fail(d, s, "invalid number (digits must follow '.')");
        while (p < d->end && is_digit(*p)) p++;
    }
    if (p < d->end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        if (p < d->end && (*p == '+' || *p == '-')) p++;
        if (p >= d->end || !is_digit(*p)) return dec_fail(d, s, "invalid number (digits must follow the exponent)");
        while (p < d->end && is_digit(*p)) p++;
    }
    d->p = p;
    if (!is_float && !overflow && mag <= (uint64_t)INT64_MAX + neg) {
        lua_pushinteger(d->L, neg ? (lua_Integer)(0 - mag) : (lua_Integer)mag);
        return 0;
    }
    /* the input is a Lua string, so strtod stops at the NUL at the latest; we validated the span */
    lua_pushnumber(d->L, strtod(s, NULL));
    return 0;
}

static int literal(decoder *d, const char *word, size_t n) {
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return dec_fail(d, d->p, "invalid literal (expected true, false or null)");
    d->p += n;
    return 0;
}

static int dec_value(decoder *d);

static int dec_array(decoder *d) {
    lua_State *L = d->L;
    d->p++;
    lua_newtable(L);
    lua_pushvalue(L, -1);      /* remember it was an array, so [] encodes back as [] */
    lua_pushboolean(L, 1);
    lua_rawset(L, MARKS);
    skip_ws(d);
    if (d->p < d->end && *d->p == ']') { d->p++; return 0; }
    for (lua_Integer i = 1; ; i++) {
        if (dec_value(d) < 0) return -1;
        lua_rawseti(L, -2, i);
        skip_ws(d);
        if (d->p < d->end && *d->p == ',') { d->p++; continue; }
        if (d->p < d->end && *d->p == ']') { d->p++; return 0; }
        return dec_fail(d, d->p, "expected ',' or ']' in an array");
    }
}

static int dec_object(decoder *d) {
    lua_State *L = d->L;
    d->p++;
    lua_newtable(L);
    skip_ws(d);
    if (d->p < d->end && *d->p == '}') { d->p++; return 0; }
    for (;;) {
        skip_ws(d);
        if (d->p >= d->end || *d->p != '"') return dec_fail(d, d->p, "expected a string key in an object");
        if (dec_string(d) < 0) return -1;
        skip_ws(d);
        if (d->p >= d->end || *d->p != ':') return dec_fail(d, d->p, "expected ':' after an object key");
        d->p++;
        if (dec_value(d) < 0) return -1;
        lua_rawset(L, -3);
        skip_ws(d);
        if (d->p < d->end && *d->p == ',') { d->p++; continue; }
        if (d->p < d->end && *d->p == '}') { d->p++; return 0; }
        return dec_fail(d, d->p, "expected ',' or '}' in an object");
    }
}

static int dec_value(decoder *d) {
    skip_ws(d);
    if (d->p >= d->end) return dec_fail(d, d->p, "unexpected end of input");
    if (++d->depth > MAX_DEPTH) return dec_fail(d, d->p, "nested deeper than 1000 levels");
    luaL_checkstack(d->L, 8, "JSON nesting");
    int rc;
    switch (*d->p) {
    case '{': rc = dec_object(d); break;
    case '[': rc = dec_array(d); break;
    case '"': rc = dec_string(d); break;
    case 't': rc = literal(d, "true", 4); if (!rc) lua_pushboolean(d->L, 1); break;
    case 'f': rc = literal(d, "false", 5); if (!rc) lua_pushboolean(d->L, 0); break;
    case 'n': rc = literal(d, "null", 4); if (!rc) lua_pushlightuserdata(d->L, NULL); break;
    default:
        if (*d->p == '-' || is_digit(*d->p)) rc = dec_number(d);
        else rc = dec_fail(d, d->p, "unexpected character");
    }
    d->depth--;
    return rc;
}

/* Decodes s; on success leaves the value on the stack and returns 1, else pushes nil, err (the
 * message starting with prefix, e.g. the file name) and returns 2. */
static int decode(lua_State *L, const char *s, size_t n, const char *prefix) {
    int top = lua_gettop(L);
    decoder d = {L, s, s, s + n, 0, NULL, NULL};
    if (n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) d.p += 3;   /* a UTF-8 byte order mark */
    if (dec_value(&d) == 0) {
        skip_ws(&d);
        if (d.p >= d.end) return 1;
        dec_fail(&d, d.p, "unexpected data after the JSON value");
    }
    lua_settop(L, top);
    size_t off = (size_t)(d.err_at - s);
    int line = 1;
    const char *bol = s;
    for (const char *q = s; q < d.err_at; q++) if (*q == '\n') { line++; bol = q + 1; }
    int col = (int)(d.err_at - bol) + 1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (prefix) { luaL_addstring(&b, prefix); luaL_addstring(&b, ": "); }
    luaL_addstring(&b, "invalid JSON: ");
    luaL_addstring(&b, d.err);
    if (d.err_at < d.end && (unsigned char)*d.err_at >= 0x20 && (unsigned char)*d.err_at < 0x7f && !strcmp(d.err, "unexpected character")) {
        luaL_addstring(&b, " '");
        luaL_addchar(&b, *d.err_at);
        luaL_addchar(&b, '\'');
    }
    lua_pushfstring(L, " at line %d, column %d (byte %d)", line, col, (int)off + 1);
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    push_error(L, "json", lua_tostring(L, -1));
    lua_pushinteger(L, line);
    lua_setfield(L, -2, "line");
    lua_pushinteger(L, col);
    lua_setfield(L, -2, "column");
    lua_pushinteger(L, (lua_Integer)off + 1);
    lua_setfield(L, -2, "position");
    return 2;
}

static int l_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_settop(L, 1);
    return decode(L, s, n, NULL);
}

/* ================================================================================================
 * encoding: into a malloc'd buffer inside a protected call (so a raise never leaks it) */

typedef struct path_seg {
    const struct path_seg *up;
    int is_index;
    lua_Integer index;
    const char *name; size_t name_len;   /* the key as written (anchored while the seg lives) */
} path_seg;

/* An object's key: s/n as written (valid UTF-8), raw/rawn the key's own bytes (ties), and the key
 * itself to look the value up again: a string (raw), or a number. */
typedef struct {
    const char *s, *raw;
    size_t n, rawn;
    int kind;                 /* KEY_STRING, KEY_INT, KEY_FLOAT */
    lua_Integer i;
    lua_Number f;
} sort_key;
enum { KEY_STRING, KEY_INT, KEY_FLOAT };

typedef struct {
    lua_State *L;
    char *buf;
    size_t len, cap;
    int pretty;
    int depth;
    sort_key *keys;           /* the keys of every object being written, innermost last */
    size_t nkeys, capkeys;
} encoder;

static void grow(encoder *e, size_t need) {
    if (e->len + need <= e->cap) return;
    size_t cap = e->cap ? e->cap : 256;
    while (cap < e->len + need) cap *= 2;
    char *nb = realloc(e->buf, cap);
    if (!nb) luaL_error(e->L, "json: out of memory");
    e->buf = nb;
    e->cap = cap;
}

static void put(encoder *e, const char *s, size_t n) {
    grow(e, n);
    memcpy(e->buf + e->len, s, n);
    e->len += n;
}

static void putc_(encoder *e, char c) {
    grow(e, 1);
    e->buf[e->len++] = c;
}

static void newline(encoder *e) {
    if (!e->pretty) return;
    grow(e, 1 + 2 * (size_t)e->depth);
    e->buf[e->len++] = '\n';
    memset(e->buf + e->len, ' ', 2 * (size_t)e->depth);
    e->len += 2 * (size_t)e->depth;
}

/* Raises "json.encode: <what> at $.a[2]". */
static int enc_fail(encoder *e, const path_seg *at, const char *what) {
    lua_State *L = e->L;
    int n = 0;
    for (const path_seg *s = at; s; s = s->up) n++;
    const path_seg **segs = lua_newuserdatauv(L, sizeof *segs * (size_t)(n ? n : 1), 0);
    int i = n;
    for (const path_seg *s = at; s; s = s->up) segs[--i] = s;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "json.encode: ");
    luaL_addstring(&b, what);
    luaL_addstring(&b, " at $");
    for (i = 0; i < n; i++) {
        if (n > 12 && i == 4) { luaL_addstring(&b, "..."); i = n - 6; }   /* a long path: both ends */
        if (segs[i]->is_index) {
            lua_pushfstring(L, "[%I]", (lua_Integer)segs[i]->index);
            luaL_addvalue(&b);
            continue;
        }
        size_t kl = segs[i]->name_len;
        const char *k = segs[i]->name;
        int plain = kl > 0 && !is_digit(k[0]);
        for (size_t j = 0; j < kl && plain; j++)
            plain = (k[j] >= 'a' && k[j] <= 'z') || (k[j] >= 'A' && k[j] <= 'Z') || is_digit(k[j]) || k[j] == '_';
        if (plain) { luaL_addchar(&b, '.'); luaL_addlstring(&b, k, kl); }
        else { luaL_addstring(&b, "[\""); luaL_addlstring(&b, k, kl); luaL_addstring(&b, "\"]"); }
    }
    luaL_pushresult(&b);
    return lua_error(L);
}

/* Length of the valid UTF-8 sequence at p (at most n bytes available), or 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x3f >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Each invalid UTF-8 byte becomes U+FFFD, so the output is always valid JSON. */
static void enc_string(encoder *e, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    grow(e, n + 2);
    putc_(e, '"');
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\' && *p < 0x80) p++;
        put(e, (const char *)run, (size_t)(p - run));
        if (p >= end) break;
        unsigned c = *p;
        if (c >= 0x80) {
            size_t l = utf8_len(p, (size_t)(end - p));
            if (l) put(e, (const char *)p, l); else put(e, "\xef\xbf\xbd", 3);   /* U+FFFD */
            p += l ? l : 1;
            continue;
        }
        p++;
        switch (c) {
        case '"': put(e, "\\\"", 2); break;
        case '\\': put(e, "\\\\", 2); break;
        case '\n': put(e, "\\n", 2); break;
        case '\r': put(e, "\\r", 2); break;
        case '\t': put(e, "\\t", 2); break;
        case '\b': put(e, "\\b", 2); break;
        case '\f': put(e, "\\f", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(e, u, 6);
        }
        }
    }
    putc_(e, '"');
}

/* Shortest %.Ng that reads back as the same double; integral values keep a ".0" so they decode
 * as floats again. */
static size_t format_float(char *out, size_t cap, double v) {
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, cap, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".e")) { memcpy(out + n, ".0", 3); n += 2; }
    return (size_t)n;
}

static void enc_number(encoder *e, const path_seg *at, int idx) {
    char tmp[48];
    size_t n;
    if (lua_isinteger(e->L, idx)) n = (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)lua_tointeger(e->L, idx));
    else {
        double v = lua_tonumber(e->L, idx);
        if (!isfinite(v)) enc_fail(e, at, isnan(v) ? "cannot encode NaN (JSON has no such number)" : "cannot encode infinity (JSON has no such number)");
        n = format_float(tmp, sizeof tmp, v);
    }
    put(e, tmp, n);
}

static void enc_value(encoder *e, int idx, const path_seg *at);

/* Array size if the table at idx encodes as an array (>= 0), else -1 (an object). */
static lua_Integer array_size(encoder *e, int idx) {
    lua_State *L = e->L;
    lua_pushvalue(L, idx);
    lua_rawget(L, MARKS);
    int marked = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (marked) return (lua_Integer)lua_rawlen(L, idx);
    lua_Integer max = 0, count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        /* (Lua stores 2.0 as the integer key 2, so integers are all there is to check) */
        lua_Integer k;
        if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1) { lua_pop(L, 1); return -1; }
        if (k > max) max = k;
        count++;
    }
    if (count == 0) return -1;                                      /* {} unless marked */
    if (max > SPARSE_SAFE && max > count * SPARSE_RATIO) return -1; /* too sparse: an object */
    return max;
}

static void enc_array(encoder *e, int idx, lua_Integer n, const path_seg *at) {
    putc_(e, '[');
    e->depth++;
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) putc_(e, ',');
        newline(e);
        lua_rawgeti(e->L, idx, i);
        path_seg seg = {at, 1, i, NULL, 0};
        enc_value(e, lua_gettop(e->L), &seg);
        lua_pop(e->L, 1);
    }
    e->depth--;
    if (n > 0) newline(e);
    putc_(e, ']');
}

/* Keys sort by the text written (raw bytes break ties between keys that differ only in invalid
 * UTF-8), so the order is the same on every run whatever the table's internal order. */
static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static int cmp_key(const void *a, const void *b) {
    const sort_key *x = a, *y = b;
    int c = cmp_bytes(x->s, x->n, y->s, y->n);
    return c ? c : cmp_bytes(x->raw, x->rawn, y->raw, y->rawn);
}

/* Most objects have a handful of keys: insertion sort, without qsort's call per comparison. */
static void sort_keys(sort_key *v, size_t n) {
    if (n > 24) { qsort(v, n, sizeof *v, cmp_key); return; }
    for (size_t i = 1; i < n; i++) {
        sort_key k = v[i];
        size_t j = i;
        while (j > 0 && cmp_key(&v[j - 1], &k) > 0) { v[j] = v[j - 1]; j--; }
        v[j] = k;
    }
}

static int valid_utf8(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        if (*p < 0x80) { p++; continue; }
        size_t l = utf8_len(p, (size_t)(end - p));
        if (!l) return 0;
        p += l;
    }
    return 1;
}

/* Pushes s with every byte that is not part of valid UTF-8 replaced by U+FFFD. */
static void push_valid_utf8(lua_State *L, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (p < end) {
        size_t l = utf8_len(p, (size_t)(end - p));
        if (l) luaL_addlstring(&b, (const char *)p, l); else luaL_addstring(&b, "\xef\xbf\xbd");
        p += l ? l : 1;
    }
    luaL_pushresult(&b);
}

static sort_key *new_key(encoder *e) {
    if (e->nkeys == e->capkeys) {
        size_t cap = e->capkeys ? 2 * e->capkeys : 64;
        sort_key *k = realloc(e->keys, cap * sizeof *k);
        if (!k) luaL_error(e->L, "json: out of memory");
        e->keys = k;
        e->capkeys = cap;
    }
    return &e->keys[e->nkeys++];
}

/* Objects always list their keys in sorted (byte) order: the same table gives the same text.
 * String keys are used in place (the table anchors them); a key that needs a new string (a
 * number, invalid UTF-8) keeps it on the stack until the object is written. */
static void enc_object(encoder *e, int idx, const path_seg *at) {
    lua_State *L = e->L;
    int top = lua_gettop(L);
    size_t base = e->nkeys;     /* this object's keys: e->keys[base ..]; the array may move */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            enc_fail(e, at, lua_pushfstring(L, "cannot encode a table key of type %s", luaL_typename(L, -1)));
        sort_key *k = new_key(e);
        if (t == LUA_TSTRING) {
            k->kind = KEY_STRING;
            k->raw = lua_tolstring(L, -1, &k->rawn);
            if (valid_utf8(k->raw, k->rawn)) { k->s = k->raw; k->n = k->rawn; continue; }
            luaL_checkstack(L, 3, "JSON object keys");
            push_valid_utf8(L, k->raw, k->rawn);
        } else {
            char tmp[48];
            size_t len = 0;
            if (lua_isinteger(L, -1)) {
                k->kind = KEY_INT; k->i = lua_tointeger(L, -1);
                len = (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)k->i);
            } else {
                k->kind = KEY_FLOAT; k->f = lua_tonumber(L, -1);
                if (!isfinite(k->f)) enc_fail(e, at, "cannot encode a NaN or infinite table key");
                len = format_float(tmp, sizeof tmp, k->f);
            }
            luaL_checkstack(L, 3, "JSON object keys");
            lua_pushlstring(L, tmp, len);
        }
        k->s = lua_tolstring(L, -1, &k->n);        /* anchored on the stack, below the key */
        if (k->kind != KEY_STRING) { k->raw = k->s; k->rawn = k->n; }
        lua_insert(L, -2);
    }
    size_t n = e->nkeys - base;
    if (n > 1) sort_keys(e->keys + base, n);   /* (no keys yet: e->keys may be NULL) */
    putc_(e, '{');
    e->depth++;
    for (size_t i = 0; i < n; i++) {
        sort_key k = e->keys[base + i];   /* a copy: nested objects may move the array */
        if (i > 0) putc_(e, ',');
        newline(e);
        enc_string(e, k.s, k.n);
        if (e->pretty) put(e, ": ", 2); else putc_(e, ':');
        if (k.kind == KEY_STRING) lua_pushlstring(L, k.raw, k.rawn);
        else if (k.kind == KEY_INT) lua_pushinteger(L, k.i);
        else lua_pushnumber(L, k.f);
        lua_rawget(L, idx);
        path_seg seg = {at, 0, 0, k.s, k.n};
        enc_value(e, lua_gettop(L), &seg);
        lua_pop(L, 1);
    }
    e->depth--;
    if (n > 0) newline(e);
    putc_(e, '}');
    e->nkeys = base;
    lua_settop(L, top);
}

static void enc_value(encoder *e, int idx, const path_seg *at) {
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put(e, "null", 4); return;
    case LUA_TBOOLEAN: if (lua_toboolean(L, idx)) put(e, "true", 4); else put(e, "false", 5); return;
    case LUA_TNUMBER: enc_number(e, at, idx); return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        enc_string(e, s, n);
        return;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { put(e, "null", 4); return; }
        break;
    case LUA_TTABLE: {
        if (e->depth >= MAX_DEPTH) enc_fail(e, at, "nested deeper than 1000 levels (a table that contains itself?)");
        luaL_checkstack(L, 16, "JSON nesting");
        lua_Integer n = array_size(e, idx);
        if (n >= 0) enc_array(e, idx, n, at); else enc_object(e, idx, at);
        return;
    }
    }
    enc_fail(e, at, lua_pushfstring(L, "cannot encode a %s", luaL_typename(L, idx)));
}

static int encode_protected(lua_State *L) {
    encoder *e = lua_touserdata(L, 1);
    enc_value(e, 2, NULL);
    return 0;
}

/* Encodes the value at idx and pushes the text (with a final newline if nl); raises on failure. */
static void encode(lua_State *L, int idx, int pretty, int nl) {
    encoder e = {L, NULL, 0, 0, pretty, 0, NULL, 0, 0};
    lua_pushvalue(L, MARKS);    /* the protected call needs the same upvalues */
    lua_pushvalue(L, ERRORS_NEW);
    lua_insert(L, -2);
    lua_pushcclosure(L, encode_protected, 2);
    lua_pushlightuserdata(L, &e);
    lua_pushvalue(L, idx);
    int rc = lua_pcall(L, 2, 0, 0);
    free(e.keys);
    if (rc == LUA_OK && nl) {
        char *nb = realloc(e.buf, e.len + 1);
        if (nb) { e.buf = nb; e.buf[e.len++] = '\n'; } else rc = -1;
    }
    if (rc == LUA_OK) {
        lua_pushlstring(L, e.buf ? e.buf : "", e.len);   /* raises only on out of memory */
        free(e.buf);
        return;
    }
    free(e.buf);
    if (rc == -1) luaL_error(L, "json: out of memory");
    lua_error(L);
}

static int l_encode(lua_State *L) {
    luaL_checkany(L, 1);
    encode(L, 1, 0, 0);
    return 1;
}

static int l_pretty(lua_State *L) {
    luaL_checkany(L, 1);
    encode(L, 1, 1, 0);
    return 1;
}

/* ================================================================================================
 * files, arrays */

static int l_decode_file(lua_State *L) {
    luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (!rbx_read_file(L, 1)) return 2;   /* the fs error names the file */
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    int r = decode(L, s, n, lua_tostring(L, 1));
    if (r == 2) { lua_pushvalue(L, 1); lua_setfield(L, -2, "path"); }
    return r;
}

/* encode_file(path, v [, {pretty=, mode=}]) -> true or nil, err; atomic through fs.write_atomic. */
static int l_encode_file(lua_State *L) {
    luaL_checkstring(L, 1);
    luaL_checkany(L, 2);
    int pretty = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "pretty");
        pretty = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 3, "mode");
    } else lua_pushnil(L);
    int mode = lua_gettop(L);
    encode(L, 2, pretty, 1);
    int text = lua_gettop(L);
    rbx_push_module_field(L, "runbox.fs", "write_atomic");
    lua_pushvalue(L, 1);
    lua_pushvalue(L, text);
    lua_pushvalue(L, mode);
    lua_call(L, 3, 2);
    return 2;
}

/* array([t]) -> t, marked to encode as a JSON array even when empty. */
static int l_array(lua_State *L) {
    if (lua_isnoneornil(L, 1)) { lua_settop(L, 0); lua_newtable(L); }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, MARKS);
    return 1;
}

static int l_is_array(lua_State *L) {
    luaL_checkany(L, 1);
    if (!lua_istable(L, 1)) { lua_pushboolean(L, 0); return 1; }
    lua_pushvalue(L, 1);
    lua_rawget(L, MARKS);
    lua_pushboolean(L, lua_toboolean(L, -1));
    return 1;
}

int luaopen_runbox_json(lua_State *L) {
    static const luaL_Reg f[] = {
        {"decode", l_decode}, {"encode", l_encode}, {"pretty", l_pretty},
        {"decode_file", l_decode_file}, {"encode_file", l_encode_file},
        {"array", l_array}, {"is_array", l_is_array}, {NULL, NULL}};
    lua_newtable(L);                      /* marks: weak keys, so marking never keeps a table alive */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    rbx_newlib_with_errors(L, f, 1);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
