/* runbox.yaml. See yaml.h and docs/api/yaml.md.
 *
 * libyaml parses; this file composes the events into Lua values. Plain scalars resolve by the
 * YAML 1.2 core schema (so "yes" and "on" stay strings); quoted scalars are always strings. Null
 * is yaml.null (the same light userdata as json.null) in sequences and for a whole document; a
 * mapping entry whose value is null is left out of the table. Aliases share the anchored Lua value.
 * Bad input never raises: decode returns nil, err with the line and column. */
#define _GNU_SOURCE
#include "rb_yaml.h"
#include "luax.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include <lauxlib.h>

#define ERRORS_NEW lua_upvalueindex(1)
#define MAX_DEPTH 512
#define MAX_ALIAS_NODES 1000000   /* nodes reached through aliases, per stream */

#define TAG_PREFIX "tag:yaml.org,2002:"

typedef struct {
    lua_State *L;
    yaml_parser_t parser;
    yaml_event_t ev;
    int have_ev;
    long nodes, alias_nodes;
    int depth;
    int anchors, sizes;       /* stack slots: anchor name -> value / -> node count */
    int err_line, err_col;    /* where the error we raise is */
} composer;

static int is_null(lua_State *L, int idx) { return lua_islightuserdata(L, idx) && !lua_touserdata(L, idx); }

/* Raises "invalid YAML at line L, column C: why" for a problem at mark. */
static int fail_at(composer *c, yaml_mark_t mark, const char *fmt, const char *arg) {
    lua_State *L = c->L;
    c->err_line = (int)mark.line + 1;
    c->err_col = (int)mark.column + 1;
    const char *why = lua_pushfstring(L, fmt, arg);
    lua_pushfstring(L, "invalid YAML at line %d, column %d: %s", c->err_line, c->err_col, why);
    return lua_error(L);
}

static int parser_fail(composer *c) {
    lua_State *L = c->L;
    yaml_parser_t *p = &c->parser;
    const char *problem = p->problem ? p->problem : "cannot parse";
    if (p->error == YAML_READER_ERROR) {   /* bad encoding: libyaml knows the byte, not the line */
        c->err_line = 0;
        lua_pushfstring(L, "invalid YAML at byte %d: %s", (int)p->problem_offset + 1, problem);
        return lua_error(L);
    }
    c->err_line = (int)p->problem_mark.line + 1;
    c->err_col = (int)p->problem_mark.column + 1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "invalid YAML at line %d, column %d: %s", c->err_line, c->err_col, problem);
    luaL_addvalue(&b);
    if (p->context) {
        lua_pushfstring(L, " (%s at line %d, column %d)", p->context, (int)p->context_mark.line + 1,
                        (int)p->context_mark.column + 1);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    return lua_error(L);
}

static void next_event(composer *c) {
    if (c->have_ev) { yaml_event_delete(&c->ev); c->have_ev = 0; }
    if (!yaml_parser_parse(&c->parser, &c->ev)) parser_fail(c);
    c->have_ev = 1;
}

/* ---- scalars ---- */

static int all_digits(const char *s, size_t n, int base) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int ok = base == 16 ? ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F'))
                            : (ch >= '0' && ch < '0' + base);
        if (!ok) return 0;
    }
    return 1;
}

static int one_of(const char *s, size_t n, const char *const *words) {
    for (; *words; words++) if (strlen(*words) == n && !memcmp(s, *words, n)) return 1;
    return 0;
}

/* Pushes an integer for [-+]?[0-9]+, 0o[0-7]+ or 0x[0-9a-fA-F]+ (a float if it overflows 64
 * bits); returns 0 if s is not one. */
static int push_int(lua_State *L, const char *s, size_t n) {
    int base = 10, neg = 0;
    const char *p = s;
    size_t len = n;
    if (n > 2 && s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) { base = s[1] == 'o' ? 8 : 16; p += 2; len -= 2; }
    else if (n > 0 && (s[0] == '-' || s[0] == '+')) { neg = s[0] == '-'; p++; len--; }
    if (!all_digits(p, len, base)) return 0;
    uint64_t v = 0;
    double f = 0;
    int overflow = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d = p[i] <= '9' ? (unsigned)(p[i] - '0') : (unsigned)((p[i] | 0x20) - 'a' + 10);
        if (v > (UINT64_MAX - d) / (unsigned)base) overflow = 1;
        else v = v * (unsigned)base + d;
        f = f * base + d;
    }
    if (base == 10) f = strtod(p, NULL);   /* correctly rounded; p is NUL-terminated by libyaml */
    if (overflow || v > (uint64_t)INT64_MAX + neg) lua_pushnumber(L, neg ? -f : f);
    else lua_pushinteger(L, neg ? (lua_Integer)(0 - v) : (lua_Integer)v);
    return 1;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? plus .inf and .nan; returns 0 if not. */
static int push_float(lua_State *L, const char *s, size_t n) {
    static const char *const inf[] = {".inf", ".Inf", ".INF", NULL};
    static const char *const nan[] = {".nan", ".NaN", ".NAN", NULL};
    if (one_of(s, n, nan)) { lua_pushnumber(L, NAN); return 1; }
    const char *p = s, *end = s + n;
    int neg = 0;
    if (p < end && (*p == '-' || *p == '+')) { neg = *p == '-'; p++; }
    if (one_of(p, (size_t)(end - p), inf)) { lua_pushnumber(L, neg ? -HUGE_VAL : HUGE_VAL); return 1; }
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') { p++; digits++; }
    if (p < end && *p == '.') {
        p++;
        while (p < end && *p >= '0' && *p <= '9') { p++; digits++; }
    }
    if (!digits) return 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '-' || *p == '+')) p++;
        if (p >= end || *p < '0' || *p > '9') return 0;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p != end) return 0;
    /* s is NUL-terminated by libyaml, and strtod stops where our grammar does */
    lua_pushnumber(L, strtod(s, NULL));
    return 1;
}

static int push_bool(lua_State *L, const char *s, size_t n) {
    static const char *const yes[] = {"true", "True", "TRUE", NULL};
    static const char *const no[] = {"false", "False", "FALSE", NULL};
    if (one_of(s, n, yes)) { lua_pushboolean(L, 1); return 1; }
    if (one_of(s, n, no)) { lua_pushboolean(L, 0); return 1; }
    return 0;
}

static int push_null(lua_State *L, const char *s, size_t n) {
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    if (!one_of(s, n, nulls)) return 0;
    lua_pushlightuserdata(L, NULL);
    return 1;
}

static void push_scalar(composer *c) {
    lua_State *L = c->L;
    yaml_event_t *e = &c->ev;
    const char *s = (const char *)e->data.scalar.value;
    size_t n = e->data.scalar.length;
    const char *tag = (const char *)e->data.scalar.tag;
    if (tag && !strncmp(tag, TAG_PREFIX, strlen(TAG_PREFIX))) {
        const char *t = tag + strlen(TAG_PREFIX);
        int ok = 1;
        if (!strcmp(t, "str")) lua_pushlstring(L, s, n);
        else if (!strcmp(t, "int")) ok = push_int(L, s, n);
        else if (!strcmp(t, "float")) {
            ok = push_float(L, s, n) || push_int(L, s, n);
            if (ok) { lua_pushnumber(L, lua_tonumber(L, -1)); lua_remove(L, -2); }   /* !!float 1 is 1.0 */
        }
        else if (!strcmp(t, "bool")) ok = push_bool(L, s, n);
        else if (!strcmp(t, "null")) ok = push_null(L, s, n);
        else fail_at(c, e->start_mark, "unsupported tag '!!%s' on a scalar", t);
        if (!ok) fail_at(c, e->start_mark, "the value does not match its tag '!!%s'", t);
        return;
    }
    if (tag && strcmp(tag, "!") != 0) fail_at(c, e->start_mark, "unsupported tag '%s'", tag);
    if (tag || e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) { lua_pushlstring(L, s, n); return; }
    if (push_null(L, s, n) || push_bool(L, s, n) || push_int(L, s, n) || push_float(L, s, n)) return;
    lua_pushlstring(L, s, n);
}

/* ---- nodes ---- */

static void compose(composer *c);

static void check_collection_tag(composer *c, const yaml_char_t *tag, const char *want) {
    if (!tag || !strcmp((const char *)tag, "!")) return;
    const char *t = (const char *)tag;
    if (!strncmp(t, TAG_PREFIX, strlen(TAG_PREFIX)) && !strcmp(t + strlen(TAG_PREFIX), want)) return;
    fail_at(c, c->ev.start_mark, "unsupported tag '%s'", t);
}

static void compose_sequence(composer *c) {
    lua_State *L = c->L;
    check_collection_tag(c, c->ev.data.sequence_start.tag, "seq");
    lua_newtable(L);
    for (lua_Integer i = 1; ; i++) {
        next_event(c);
        if (c->ev.type == YAML_SEQUENCE_END_EVENT) return;
        compose(c);
        lua_rawseti(L, -2, i);
    }
}

/* Copies the keys of the mapping at src missing from the table at dst ("<<" merge keys). */
static void merge_from(composer *c, int dst, int src, yaml_mark_t mark) {
    lua_State *L = c->L;
    if (!lua_istable(L, src)) fail_at(c, mark, "a merge key '<<' needs a mapping or a list of mappings%s", "");
    lua_pushnil(L);
    while (lua_next(L, src)) {
        lua_pushvalue(L, -2);
        if (lua_rawget(L, dst) == LUA_TNIL) {
            lua_pushvalue(L, -3);
            lua_pushvalue(L, -3);
            lua_rawset(L, dst);
            if (++c->alias_nodes > MAX_ALIAS_NODES) fail_at(c, mark, "more than %s nodes through aliases and merges (an alias bomb?)", "1000000");
        }
        lua_pop(L, 2);
    }
}

static void compose_mapping(composer *c) {
    lua_State *L = c->L;
    check_collection_tag(c, c->ev.data.mapping_start.tag, "map");
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_newtable(L);                  /* merge sources, applied at the end so own keys win */
    int merges = lua_gettop(L);
    int nmerge = 0;
    for (;;) {
        next_event(c);
        yaml_event_t *e = &c->ev;
        if (e->type == YAML_MAPPING_END_EVENT) break;
        yaml_mark_t mark = e->start_mark;
        if (e->type == YAML_SEQUENCE_START_EVENT || e->type == YAML_MAPPING_START_EVENT)
            fail_at(c, mark, "a mapping key must be a scalar, not a %s", e->type == YAML_SEQUENCE_START_EVENT ? "sequence" : "mapping");
        int merge = e->type == YAML_SCALAR_EVENT && e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                    !e->data.scalar.tag && e->data.scalar.length == 2 && !memcmp(e->data.scalar.value, "<<", 2);
        compose(c);
        if (merge) {
            lua_pop(L, 1);
            next_event(c);
            compose(c);
            if (lua_istable(L, -1) && lua_rawlen(L, -1) > 0) {   /* a list of mappings */
                lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
                for (lua_Integer i = 1; i <= n; i++) { lua_rawgeti(L, -1, i); lua_rawseti(L, merges, ++nmerge); }
                lua_pop(L, 1);
            } else lua_rawseti(L, merges, ++nmerge);
            continue;
        }
        if (lua_istable(L, -1)) fail_at(c, mark, "a mapping key must be a scalar, not an alias of a collection%s", "");
        if (is_null(L, -1)) fail_at(c, mark, "a mapping key must not be null%s", "");
        if (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1))) fail_at(c, mark, "a mapping key must not be .nan%s", "");
        lua_pushvalue(L, -1);
        if (lua_rawget(L, t) != LUA_TNIL) {
            lua_pushvalue(L, -2);
            fail_at(c, mark, "duplicate key '%s'", luaL_tolstring(L, -1, NULL));
        }
        lua_pop(L, 1);
        next_event(c);
        compose(c);
        lua_rawset(L, t);
    }
    for (int i = 1; i <= nmerge; i++) {
        lua_rawgeti(L, merges, i);
        merge_from(c, t, lua_gettop(L), c->ev.start_mark);
        lua_pop(L, 1);
    }
    /* null values were stored as yaml.null so duplicates are caught; mappings leave them out */
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (is_null(L, -1)) { lua_pop(L, 1); lua_pushvalue(L, -1); lua_pushnil(L); lua_rawset(L, t); }
        else lua_pop(L, 1);
    }
    lua_pop(L, 1);   /* merges */
}

/* Composes the node that starts at the current event and pushes its value. */
static void compose(composer *c) {
    lua_State *L = c->L;
    yaml_event_t *e = &c->ev;
    if (++c->depth > MAX_DEPTH) fail_at(c, e->start_mark, "nested deeper than %s levels", "512");
    luaL_checkstack(L, 16, "YAML nesting");
    long before = c->nodes;   /* counts expanded nodes: an alias adds the size of what it names */
    const yaml_char_t *anchor = NULL;
    yaml_mark_t mark = e->start_mark;
    switch (e->type) {
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)e->data.alias.anchor;
        lua_getfield(L, c->sizes, name);
        if (lua_isnil(L, -1)) fail_at(c, mark, "alias '*%s' refers to an undefined anchor", name);
        if (lua_toboolean(L, -1) && !lua_isinteger(L, -1)) fail_at(c, mark, "alias '*%s' refers to a node that contains it", name);
        c->alias_nodes += (long)lua_tointeger(L, -1);
        c->nodes += (long)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (c->alias_nodes > MAX_ALIAS_NODES)
            fail_at(c, mark, "more than %s nodes through aliases (an alias bomb?)", "1000000");
        lua_getfield(L, c->anchors, name);
        c->depth--;
        return;
    }
    case YAML_SCALAR_EVENT: anchor = e->data.scalar.anchor; break;
    case YAML_SEQUENCE_START_EVENT: anchor = e->data.sequence_start.anchor; break;
    case YAML_MAPPING_START_EVENT: anchor = e->data.mapping_start.anchor; break;
    default: fail_at(c, mark, "unexpected event %s", "");
    }
    c->nodes++;
    int anchored = anchor != NULL;   /* the event (and anchor) is freed by the next one */
    if (anchored) {   /* keep the name; mark the anchor as in progress */
        lua_pushstring(L, (const char *)anchor);
        lua_pushvalue(L, -1);
        lua_pushboolean(L, 1);
        lua_rawset(L, c->sizes);
    }
    if (e->type == YAML_SCALAR_EVENT) push_scalar(c);
    else if (e->type == YAML_SEQUENCE_START_EVENT) compose_sequence(c);
    else compose_mapping(c);
    if (anchored) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, c->anchors);
        lua_pushvalue(L, -2);
        lua_pushinteger(L, c->nodes - before);
        lua_rawset(L, c->sizes);
        lua_remove(L, -2);
    }
    c->depth--;
}

/* Protected (argument: the composer): composes every document of the stream into a list. */
static int compose_stream(lua_State *L) {
    composer *c = lua_touserdata(L, 1);
    lua_newtable(L);
    int docs = lua_gettop(L);
    int n = 0;
    next_event(c);   /* stream start */
    for (;;) {
        next_event(c);
        if (c->ev.type == YAML_STREAM_END_EVENT) break;
        /* document start: anchors do not carry over between documents */
        lua_newtable(L);
        c->anchors = lua_gettop(L);
        lua_newtable(L);
        c->sizes = lua_gettop(L);
        next_event(c);
        compose(c);
        lua_rawseti(L, docs, ++n);
        lua_pop(L, 2);
        next_event(c);   /* document end */
    }
    lua_settop(L, docs);
    return 1;
}

/* Parses s; pushes the list of documents and returns 1, or pushes nil, err and returns 2. */
static int decode_docs(lua_State *L, const char *s, size_t n, const char *name) {
    composer c;
    memset(&c, 0, sizeof c);
    c.L = L;
    if (!yaml_parser_initialize(&c.parser)) return luaL_error(L, "yaml: out of memory");
    yaml_parser_set_input_string(&c.parser, (const unsigned char *)s, n);
    lua_pushcfunction(L, compose_stream);
    lua_pushlightuserdata(L, &c);
    int rc = lua_pcall(L, 1, 1, 0);
    if (c.have_ev) yaml_event_delete(&c.ev);
    yaml_parser_delete(&c.parser);
    if (rc == LUA_OK) return 1;
    if (rc != LUA_ERRRUN || !lua_isstring(L, -1)) lua_error(L);   /* out of memory: raise it */
    if (name) { lua_pushfstring(L, "%s: %s", name, lua_tostring(L, -1)); lua_remove(L, -2); }
    int msg = lua_gettop(L);
    lua_pushnil(L);
    lua_pushvalue(L, ERRORS_NEW);
    lua_pushliteral(L, "yaml");
    lua_pushvalue(L, msg);
    lua_createtable(L, 0, 3);
    if (c.err_line) {
        lua_pushinteger(L, c.err_line); lua_setfield(L, -2, "line");
        lua_pushinteger(L, c.err_col); lua_setfield(L, -2, "column");
    }
    if (name) { lua_pushstring(L, name); lua_setfield(L, -2, "path"); }
    lua_call(L, 3, 1);
    return 2;
}

/* decode(s) -> first document (yaml.null when empty) | nil, err */
static int l_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (decode_docs(L, s, n, NULL) == 2) return 2;
    lua_rawgeti(L, -1, 1);
    if (lua_isnil(L, -1)) lua_pushlightuserdata(L, NULL);
    return 1;
}

static int l_decode_all(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    return decode_docs(L, s, n, NULL);
}

static int l_decode_file(lua_State *L) {
    luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (!rbx_read_file(L, 1)) return 2;   /* the fs error names the file */
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (decode_docs(L, s, n, lua_tostring(L, 1)) == 2) return 2;
    lua_rawgeti(L, -1, 1);
    if (lua_isnil(L, -1)) lua_pushlightuserdata(L, NULL);
    return 1;
}

int luaopen_runbox_yaml(lua_State *L) {
    static const luaL_Reg f[] = {
        {"decode", l_decode}, {"decode_all", l_decode_all}, {"decode_file", l_decode_file}, {NULL, NULL}};
    rbx_newlib_with_errors(L, f, 0);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
