/* runbox.pb: protobuf wire codec driven by schema tables written in Lua.
 *
 * pb.schema compiles a table of message and enum definitions into C descriptors once (fields sorted
 * by number, a direct number -> field index for decoding); pb.encode and pb.decode then walk Lua
 * tables and bytes with those. Every string the codec needs as a table key (field names, oneof names,
 * enum names) is kept in one Lua table, the "names" table, and reached by integer index, so no key is
 * hashed or interned again while encoding or decoding.
 *
 * Semantics are proto3's: implicit presence for plain scalars, explicit presence for optional and
 * oneof members, packed numeric repeated fields, open enums. Decoding never reads past the input and
 * reports malformed input as nil, err; encoding raises on a Lua value of the wrong type. */
#include "pb.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_MT "runbox.pb.Schema"
#define MSG_MT "runbox.pb.Message"
#define ENUM_MT "runbox.pb.enum"
#define BUF_MT "runbox.pb.buffer"

#define PB_MAX_DEPTH 100          /* nested messages (and groups) a decode or encode goes through */
#define PB_MAX_FIELD 536870911    /* 2^29 - 1 */
#define PB_DIRECT_MAX 4096        /* field numbers up to this are looked up by index, above by search */

_Static_assert(sizeof(lua_Integer) == 8, "runbox.pb needs 64-bit Lua integers");

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

enum pb_type {
    PT_DOUBLE = 1, PT_FLOAT, PT_INT64, PT_UINT64, PT_INT32, PT_UINT32, PT_SINT32, PT_SINT64,
    PT_FIXED32, PT_FIXED64, PT_SFIXED32, PT_SFIXED64, PT_BOOL, PT_STRING, PT_BYTES,
    PT_ENUM, PT_MESSAGE, PT_MAP
};

/* PL_PLAIN: proto3 implicit presence (a default value is not sent); message fields always have
 * presence, so for them plain and optional are the same. */
enum pb_label { PL_PLAIN, PL_OPTIONAL, PL_ONEOF, PL_REPEATED, PL_MAP };

static const struct { const char *name; uint8_t type, wire, key_ok; } scalar_types[] = {
    {"double", PT_DOUBLE, WT_I64, 0},     {"float", PT_FLOAT, WT_I32, 0},
    {"int64", PT_INT64, WT_VARINT, 1},    {"uint64", PT_UINT64, WT_VARINT, 1},
    {"int32", PT_INT32, WT_VARINT, 1},    {"uint32", PT_UINT32, WT_VARINT, 1},
    {"sint32", PT_SINT32, WT_VARINT, 1},  {"sint64", PT_SINT64, WT_VARINT, 1},
    {"fixed32", PT_FIXED32, WT_I32, 1},   {"fixed64", PT_FIXED64, WT_I64, 1},
    {"sfixed32", PT_SFIXED32, WT_I32, 1}, {"sfixed64", PT_SFIXED64, WT_I64, 1},
    {"bool", PT_BOOL, WT_VARINT, 1},      {"string", PT_STRING, WT_LEN, 1},
    {"bytes", PT_BYTES, WT_LEN, 0},       {NULL, 0, 0, 0}};

struct pb_msg;

struct pb_enum {
    int name_ref;       /* names[]: the enum's name */
    int byname_ref;     /* names[]: table name -> number */
    int bynum_ref;      /* names[]: table number -> name */
    int zero_ref;       /* names[]: the name of value 0, or 0 when there is none */
};

/* The type of one value: a field's value, a repeated element, a map key or a map value. */
struct pb_vtype {
    uint8_t type, wire;
    const struct pb_msg *msg;
    const struct pb_enum *en;
};

struct pb_field {
    uint32_t number;
    uint8_t label;
    struct pb_vtype v;      /* the value (maps: the entry's value) */
    struct pb_vtype k;      /* maps: the entry's key */
    int name_ref;
    int oneof;              /* index in msg->oneofs, or -1 */
};

struct pb_oneof {
    int name_ref;
    int nmembers;
    int *members;           /* indexes in msg->fields */
};

struct pb_msg {
    int name_ref;
    int nfields, noneofs;
    struct pb_field *fields;        /* sorted by number */
    struct pb_oneof *oneofs;
    uint32_t ndirect;               /* direct[n] for n < ndirect: field index + 1, or 0 */
    int *direct;
};

struct block { struct block *next; max_align_t data[]; };

struct pb_schema {
    struct block *blocks;           /* every allocation of the schema, freed together */
    int nmsgs, nenums;
    struct pb_msg *msgs;
    struct pb_enum *enums;
};

/* What pb.encode/pb.decode receive as S.Name. Uservalues: 1 the schema, 2 its names table. */
struct pb_handle {
    const struct pb_schema *S;
    const struct pb_msg *m;
};

/* ---------------------------------------------------------------------------------------------- */
/* Schema compilation                                                                              */

static void *arena_alloc(lua_State *L, struct pb_schema *S, size_t n) {
    struct block *b = calloc(1, sizeof *b + n);
    if (!b) luaL_error(L, "pb.schema: out of memory");
    b->next = S->blocks;
    S->blocks = b;
    return b->data;
}

static int schema_gc(lua_State *L) {
    struct pb_schema *S = luaL_checkudata(L, 1, SCHEMA_MT);
    while (S->blocks) {
        struct block *b = S->blocks;
        S->blocks = b->next;
        free(b);
    }
    return 0;
}

struct compiler {
    lua_State *L;
    struct pb_schema *S;
    int names, nnames;      /* the names table (stack index) and its length */
    int kinds;              /* type name -> msg index + 1, or -(enum index + 1) */
};

/* Pops the top value into the names table; returns its index there. */
static int keep(struct compiler *C) {
    lua_rawseti(C->L, C->names, ++C->nnames);
    return C->nnames;
}

static int scalar_index(const char *name) {
    for (int i = 0; scalar_types[i].name; i++)
        if (!strcmp(scalar_types[i].name, name)) return i;
    return -1;
}

static int is_enum_table(lua_State *L, int idx) {
    if (!lua_getmetatable(L, idx)) return 0;
    luaL_getmetatable(L, ENUM_MT);
    int r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return r;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static void compile_enum(struct compiler *C, struct pb_enum *en, const char *name, int def, int result) {
    lua_State *L = C->L;
    lua_pushstring(L, name);
    en->name_ref = keep(C);
    lua_newtable(L);            /* byname */
    int byname = lua_gettop(L);
    lua_newtable(L);            /* bynum */
    int bynum = byname + 1;
    lua_pushnil(L);
    while (lua_next(L, def)) {  /* pb.enum checked the types */
        lua_Integer v = lua_tointeger(L, -1);
        if (lua_rawgeti(L, bynum, v) != LUA_TNIL)
            luaL_error(L, "pb.schema: enum %s: %s and %s both have the value %I", name, lua_tostring(L, -1),
                       lua_tostring(L, -3), v);
        lua_pop(L, 1);
        lua_pushvalue(L, -2);
        lua_rawseti(L, bynum, v);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, byname);
        lua_pop(L, 1);
    }
    en->zero_ref = 0;
    if (lua_rawgeti(L, bynum, 0) != LUA_TNIL) en->zero_ref = keep(C);
    else lua_pop(L, 1);
    /* S.Name: a copy of name -> number, so changing it cannot change the codec */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, byname)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_setfield(L, result, name);
    en->bynum_ref = keep(C);
    en->byname_ref = keep(C);
}

/* Resolves a type name used by a field: fills vt, or raises. map is handled by the caller. */
static void resolve_type(struct compiler *C, struct pb_vtype *vt, const char *tname, const char *mname,
                         const char *fname) {
    lua_State *L = C->L;
    int s = scalar_index(tname);
    if (s >= 0) {
        vt->type = scalar_types[s].type;
        vt->wire = scalar_types[s].wire;
        return;
    }
    lua_getfield(L, C->kinds, tname);
    int isnum;
    lua_Integer k = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum)
        luaL_error(L, "pb.schema: %s.%s: unknown type '%s' (not a scalar type and not a message or enum of this schema)",
                   mname, fname, tname);
    if (k > 0) {
        vt->type = PT_MESSAGE;
        vt->wire = WT_LEN;
        vt->msg = &C->S->msgs[k - 1];
    } else {
        vt->type = PT_ENUM;
        vt->wire = WT_VARINT;
        vt->en = &C->S->enums[-k - 1];
    }
}

/* Reads an optional boolean option of a field spec. */
static int spec_flag(lua_State *L, int spec, const char *key, const char *mname, const char *fname) {
    int t = lua_getfield(L, spec, key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN)
        luaL_error(L, "pb.schema: %s.%s: option %s must be true or false, got %s", mname, fname, key, lua_typename(L, t));
    return v;
}

static const char *spec_string(lua_State *L, int spec, const char *key, const char *mname, const char *fname) {
    int t = lua_getfield(L, spec, key);
    const char *s = t == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1);            /* the spec table keeps the string alive */
    if (t != LUA_TNIL && (!s || !*s))
        luaL_error(L, "pb.schema: %s.%s: option %s must be a non-empty string", mname, fname, key);
    return s;
}

static void check_spec_keys(lua_State *L, int spec, const char *mname, const char *fname) {
    static const char *const allowed[] = {"repeated", "optional", "oneof", "key", "value", NULL};
    lua_pushnil(L);
    while (lua_next(L, spec)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            lua_Integer i = lua_tointeger(L, -1);
            if (lua_isinteger(L, -1) && i >= 1 && i <= 3) continue;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -1);
            int ok = 0;
            for (int i = 0; allowed[i]; i++) ok |= !strcmp(k, allowed[i]);
            if (ok) continue;
            luaL_error(L, "pb.schema: %s.%s: unknown option '%s' (options: repeated, optional, oneof, key, value)",
                       mname, fname, k);
        }
        luaL_error(L, "pb.schema: %s.%s: unexpected entry in the field spec {number, name, type, options...}", mname, fname);
    }
}

static void compile_field(struct compiler *C, struct pb_field *f, const char *mname, int spec, int pos, int oneofs) {
    lua_State *L = C->L;
    if (lua_type(L, spec) != LUA_TTABLE)
        luaL_error(L, "pb.schema: %s: field #%d must be a table {number, name, type}, got %s", mname, pos, luaL_typename(L, spec));
    lua_rawgeti(L, spec, 2);
    if (lua_type(L, -1) != LUA_TSTRING || !lua_rawlen(L, -1))
        luaL_error(L, "pb.schema: %s: field #%d: the second entry must be the field name (a non-empty string)", mname, pos);
    const char *fname = lua_tostring(L, -1);
    f->name_ref = keep(C);      /* the names table keeps fname alive */
    lua_rawgeti(L, spec, 1);
    int isnum;
    lua_Integer num = lua_tointegerx(L, -1, &isnum);
    if (lua_type(L, -1) != LUA_TNUMBER || !isnum || num < 1 || num > PB_MAX_FIELD)
        luaL_error(L, "pb.schema: %s.%s: the field number must be an integer from 1 to %d", mname, fname, PB_MAX_FIELD);
    if (num >= 19000 && num <= 19999)
        luaL_error(L, "pb.schema: %s.%s: field numbers 19000 to 19999 are reserved by protobuf", mname, fname);
    lua_pop(L, 1);
    f->number = (uint32_t)num;
    lua_rawgeti(L, spec, 3);
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "pb.schema: %s.%s: the third entry must be the type name (a string)", mname, fname);
    const char *tname = lua_tostring(L, -1);
    lua_pop(L, 1);              /* the spec keeps tname alive */
    check_spec_keys(L, spec, mname, fname);

    int repeated = spec_flag(L, spec, "repeated", mname, fname);
    int optional = spec_flag(L, spec, "optional", mname, fname);
    const char *oneof = spec_string(L, spec, "oneof", mname, fname);
    const char *key = spec_string(L, spec, "key", mname, fname);
    const char *value = spec_string(L, spec, "value", mname, fname);
    f->oneof = -1;
    if (!strcmp(tname, "map")) {
        if (repeated || optional || oneof)
            luaL_error(L, "pb.schema: %s.%s: a map cannot be repeated, optional or in a oneof", mname, fname);
        if (!key || !value) luaL_error(L, "pb.schema: %s.%s: a map needs key = TYPE and value = TYPE", mname, fname);
        int s = scalar_index(key);
        if (s < 0 || !scalar_types[s].key_ok)
            luaL_error(L, "pb.schema: %s.%s: invalid map key type '%s' (integer types, bool or string)", mname, fname, key);
        f->k.type = scalar_types[s].type;
        f->k.wire = scalar_types[s].wire;
        if (!strcmp(value, "map")) luaL_error(L, "pb.schema: %s.%s: a map value cannot be a map", mname, fname);
        resolve_type(C, &f->v, value, mname, fname);
        f->label = PL_MAP;
        return;
    }
    if (key || value) luaL_error(L, "pb.schema: %s.%s: key and value are options of map fields only", mname, fname);
    resolve_type(C, &f->v, tname, mname, fname);
    if (repeated && (optional || oneof))
        luaL_error(L, "pb.schema: %s.%s: a repeated field cannot be optional or in a oneof", mname, fname);
    if (optional && oneof)
        luaL_error(L, "pb.schema: %s.%s: a oneof member already has presence; drop optional", mname, fname);
    f->label = repeated ? PL_REPEATED : optional ? PL_OPTIONAL : oneof ? PL_ONEOF : PL_PLAIN;
    if (oneof) {
        if (lua_getfield(L, oneofs, oneof) == LUA_TNIL) {       /* a new oneof: the next index */
            lua_pop(L, 1);
            lua_Integer n = 0;
            lua_pushnil(L);
            while (lua_next(L, oneofs)) { n++; lua_pop(L, 1); }
            lua_pushinteger(L, n);
            lua_pushvalue(L, -1);
            lua_setfield(L, oneofs, oneof);
        }
        f->oneof = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
}

static int cmp_field(const void *a, const void *b) {
    uint32_t x = ((const struct pb_field *)a)->number, y = ((const struct pb_field *)b)->number;
    return x < y ? -1 : x > y;
}

static void compile_message(struct compiler *C, struct pb_msg *m, const char *name, int def) {
    lua_State *L = C->L;
    lua_pushstring(L, name);
    m->name_ref = keep(C);
    lua_Integer n = (lua_Integer)lua_rawlen(L, def);
    lua_pushnil(L);
    while (lua_next(L, def)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n)
            luaL_error(L, "pb.schema: %s: a message is a list of fields {number, name, type, ...}; found the key %s",
                       name, luaL_tolstring(L, -1, NULL));
    }
    if (n > 100000) luaL_error(L, "pb.schema: %s: too many fields", name);
    m->nfields = (int)n;
    m->fields = arena_alloc(L, C->S, sizeof(struct pb_field) * (size_t)n);
    lua_newtable(L);            /* oneof name -> index */
    int oneofs = lua_gettop(L);
    for (int i = 0; i < m->nfields; i++) {
        lua_rawgeti(L, def, i + 1);
        compile_field(C, &m->fields[i], name, lua_gettop(L), i + 1, oneofs);
        lua_pop(L, 1);
    }
    /* duplicate names, and oneof names that are also field names (decode sets msg[oneof]) */
    lua_newtable(L);
    int seen = lua_gettop(L);
    for (int i = 0; i < m->nfields; i++) {
        lua_rawgeti(L, C->names, m->fields[i].name_ref);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, seen) != LUA_TNIL)
            luaL_error(L, "pb.schema: %s: duplicate field name '%s'", name, lua_tostring(L, -2));
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
        lua_rawset(L, seen);
    }
    qsort(m->fields, (size_t)m->nfields, sizeof *m->fields, cmp_field);
    for (int i = 1; i < m->nfields; i++)
        if (m->fields[i].number == m->fields[i - 1].number) {
            lua_rawgeti(L, C->names, m->fields[i - 1].name_ref);
            lua_rawgeti(L, C->names, m->fields[i].name_ref);
            luaL_error(L, "pb.schema: %s: duplicate field number %d (%s and %s)", name, (int)m->fields[i].number,
                       lua_tostring(L, -2), lua_tostring(L, -1));
        }
    /* oneofs: names and member lists */
    int no = 0;
    lua_pushnil(L);
    while (lua_next(L, oneofs)) { no++; lua_pop(L, 1); }
    m->noneofs = no;
    m->oneofs = arena_alloc(L, C->S, sizeof(struct pb_oneof) * (size_t)no);
    lua_pushnil(L);
    while (lua_next(L, oneofs)) {
        struct pb_oneof *o = &m->oneofs[lua_tointeger(L, -1)];
        lua_pushvalue(L, -2);
        if (lua_rawget(L, seen) != LUA_TNIL)
            luaL_error(L, "pb.schema: %s: oneof name '%s' is also a field name", name, lua_tostring(L, -3));
        lua_pop(L, 1);
        lua_pushvalue(L, -2);
        o->name_ref = keep(C);
        lua_pop(L, 1);
    }
    for (int i = 0; i < m->nfields; i++)
        if (m->fields[i].oneof >= 0) m->oneofs[m->fields[i].oneof].nmembers++;
    for (int j = 0; j < no; j++) {
        m->oneofs[j].members = arena_alloc(L, C->S, sizeof(int) * (size_t)m->oneofs[j].nmembers);
        m->oneofs[j].nmembers = 0;
    }
    for (int i = 0; i < m->nfields; i++)
        if (m->fields[i].oneof >= 0) {
            struct pb_oneof *o = &m->oneofs[m->fields[i].oneof];
            o->members[o->nmembers++] = i;
        }
    /* direct lookup for the (usual) small field numbers */
    uint32_t maxnum = m->nfields ? m->fields[m->nfields - 1].number : 0;
    m->ndirect = (maxnum < PB_DIRECT_MAX ? maxnum : PB_DIRECT_MAX) + 1;
    m->direct = arena_alloc(L, C->S, sizeof(int) * m->ndirect);
    for (int i = 0; i < m->nfields; i++)
        if (m->fields[i].number < m->ndirect) m->direct[m->fields[i].number] = i + 1;
    lua_pop(L, 2);
}

static int l_schema(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct pb_schema *S = lua_newuserdatauv(L, sizeof *S, 1);         /* 2 */
    memset(S, 0, sizeof *S);
    luaL_setmetatable(L, SCHEMA_MT);
    lua_newtable(L);                                                    /* 3: names */
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 2, 1);
    lua_newtable(L);                                                    /* 4: kinds */
    lua_newtable(L);                                                    /* 5: result */
    struct compiler C = {L, S, 3, 0, 4};

    /* type names, sorted so that compilation is deterministic */
    int ntypes = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "pb.schema: keys must be type names (strings), got a %s key", luaL_typename(L, -2));
        const char *tn = lua_tostring(L, -2);
        if (!*tn || scalar_index(tn) >= 0 || !strcmp(tn, "map"))
            luaL_error(L, "pb.schema: '%s' cannot be a type name (empty or a built-in type)", tn);
        if (lua_type(L, -1) != LUA_TTABLE)
            luaL_error(L, "pb.schema: %s must be a message (a list of fields) or a pb.enum{...}, got %s", tn,
                       luaL_typename(L, -1));
        if (is_enum_table(L, -1)) S->nenums++;
        else S->nmsgs++;
        ntypes++;
        lua_pop(L, 1);
    }
    const char **tnames = arena_alloc(L, S, sizeof(char *) * (size_t)ntypes);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) { lua_pop(L, 1); tnames[i++] = lua_tostring(L, -1); }   /* the keys stay in arg 1 */
    qsort(tnames, (size_t)ntypes, sizeof *tnames, cmp_str);
    S->msgs = arena_alloc(L, S, sizeof(struct pb_msg) * (size_t)S->nmsgs);
    S->enums = arena_alloc(L, S, sizeof(struct pb_enum) * (size_t)S->nenums);
    int nm = 0, ne = 0;
    for (i = 0; i < ntypes; i++) {
        lua_getfield(L, 1, tnames[i]);
        lua_pushinteger(L, is_enum_table(L, -1) ? -(++ne) : ++nm);
        lua_setfield(L, 4, tnames[i]);
        lua_pop(L, 1);
    }
    for (i = 0; i < ntypes; i++) {
        lua_getfield(L, 4, tnames[i]);
        lua_Integer k = lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 1, tnames[i]);
        if (k < 0) compile_enum(&C, &S->enums[-k - 1], tnames[i], lua_gettop(L), 5);
        else compile_message(&C, &S->msgs[k - 1], tnames[i], lua_gettop(L));
        lua_pop(L, 1);
    }
    for (i = 0; i < ntypes; i++) {
        lua_getfield(L, 4, tnames[i]);
        lua_Integer k = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (k < 0) continue;
        struct pb_handle *h = lua_newuserdatauv(L, sizeof *h, 2);
        h->S = S;
        h->m = &S->msgs[k - 1];
        luaL_setmetatable(L, MSG_MT);
        lua_pushvalue(L, 2);
        lua_setiuservalue(L, -2, 1);
        lua_pushvalue(L, 3);
        lua_setiuservalue(L, -2, 2);
        lua_setfield(L, 5, tnames[i]);
    }
    lua_pushvalue(L, 5);
    return 1;
}

/* pb.enum{NAME = number, ...}: marks a table as an enum definition for pb.schema. */
static int l_enum(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_rawlen(L, -2))
            luaL_error(L, "pb.enum: keys must be value names (strings), got a %s key", luaL_typename(L, -2));
        int isnum;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (lua_type(L, -1) != LUA_TNUMBER || !isnum || v < INT32_MIN || v > INT32_MAX) {
            const char *k = lua_tostring(L, -2);
            luaL_error(L, "pb.enum: %s must be a 32-bit integer, got %s", k, luaL_tolstring(L, -1, NULL));
        }
        lua_pushvalue(L, -2);
        lua_pushinteger(L, v);
        lua_rawset(L, 2);
        lua_pop(L, 1);
    }
    luaL_setmetatable(L, ENUM_MT);
    return 1;
}

static int handle_tostring(lua_State *L) {
    struct pb_handle *h = luaL_checkudata(L, 1, MSG_MT);
    lua_getiuservalue(L, 1, 2);
    lua_rawgeti(L, -1, h->m->name_ref);
    lua_pushfstring(L, "pb.Message(%s)", lua_tostring(L, -1));
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Encoding                                                                                        */

/* The output buffer: a userdata on the stack, so that an error raised mid-encode frees it. */
struct pb_buf {
    char *p;
    size_t n, cap;
    char init[256];
};

static int buf_gc(lua_State *L) {
    struct pb_buf *b = luaL_checkudata(L, 1, BUF_MT);
    if (b->p != b->init) free(b->p);
    b->p = b->init;
    b->n = 0;
    return 0;
}

enum { FR_NONE, FR_INDEX, FR_KEY, FR_MAPKEY };

struct eframe {
    const struct pb_msg *m;
    const struct pb_field *f;
    int kind;               /* FR_*: what follows the field name in error paths */
    lua_Integer index;      /* FR_INDEX: the list position */
    int keyidx;             /* FR_KEY, FR_MAPKEY: stack index of the map key */
};

struct enc {
    lua_State *L;
    struct pb_buf *b;
    int names;
    int depth;
    struct eframe fr[PB_MAX_DEPTH + 2];
};

/* Pushes "Msg.field[i].sub" for the current position. */
static void enc_push_path(struct enc *E) {
    lua_State *L = E->L;
    luaL_checkstack(L, 4 * E->depth + 8, "pb: error path");
    int n = 1;
    lua_rawgeti(L, E->names, E->fr[1].m->name_ref);
    for (int d = 1; d <= E->depth; d++) {
        const struct eframe *fr = &E->fr[d];
        if (!fr->f) break;
        lua_pushliteral(L, ".");
        lua_rawgeti(L, E->names, fr->f->name_ref);
        n += 2;
        if (fr->kind == FR_INDEX) { lua_pushfstring(L, "[%I]", fr->index); n++; }
        else if (fr->kind == FR_KEY) {
            if (lua_type(L, fr->keyidx) == LUA_TSTRING) lua_pushfstring(L, "[\"%s\"]", lua_tostring(L, fr->keyidx));
            else { luaL_tolstring(L, fr->keyidx, NULL); lua_pushfstring(L, "[%s]", lua_tostring(L, -1)); lua_remove(L, -2); }
            n++;
        } else if (fr->kind == FR_MAPKEY) {
            luaL_tolstring(L, fr->keyidx, NULL);
            lua_pushfstring(L, " (map key %s)", lua_tostring(L, -1));
            lua_remove(L, -2);
            n++;
        }
    }
    lua_concat(L, n);
}

static int enc_error(struct enc *E, const char *fmt, ...) {
    lua_State *L = E->L;
    enc_push_path(E);
    lua_pushliteral(L, ": ");
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 3);
    return lua_error(L);
}

static void buf_need(struct enc *E, size_t need) {
    struct pb_buf *b = E->b;
    if (b->cap - b->n >= need) return;
    size_t cap = b->cap;
    while (cap - b->n < need) {
        if (cap > SIZE_MAX / 2) luaL_error(E->L, "pb.encode: message too large");
        cap *= 2;
    }
    char *p = b->p == b->init ? malloc(cap) : realloc(b->p, cap);
    if (!p) luaL_error(E->L, "pb.encode: out of memory");
    if (b->p == b->init) memcpy(p, b->init, b->n);
    b->p = p;
    b->cap = cap;
}

static inline void put_varint(struct enc *E, uint64_t v) {
    buf_need(E, 10);
    char *p = E->b->p + E->b->n;
    size_t i = 0;
    while (v >= 0x80) { p[i++] = (char)(v | 0x80); v >>= 7; }
    p[i++] = (char)v;
    E->b->n += i;
}

static inline void put_fixed(struct enc *E, uint64_t v, int nbytes) {
    buf_need(E, 8);
    char *p = E->b->p + E->b->n;
    for (int i = 0; i < nbytes; i++) p[i] = (char)(v >> (8 * i));
    E->b->n += (size_t)nbytes;
}

static inline void put_tag(struct enc *E, uint32_t num, int wt) { put_varint(E, ((uint64_t)num << 3) | (unsigned)wt); }

static void put_bytes(struct enc *E, const char *s, size_t n) {
    put_varint(E, n);
    buf_need(E, n);
    memcpy(E->b->p + E->b->n, s, n);
    E->b->n += n;
}

/* A length prefix is written after its body: one byte is reserved, and the body moved when the
 * length needs more. */
static size_t len_begin(struct enc *E) {
    buf_need(E, 1);
    return E->b->n++;
}

static void len_end(struct enc *E, size_t at) {
    size_t len = E->b->n - at - 1;
    int vs = 1;
    for (size_t v = len; v >= 0x80; v >>= 7) vs++;
    if (vs > 1) {
        buf_need(E, (size_t)vs - 1);
        memmove(E->b->p + at + vs, E->b->p + at + 1, len);
        E->b->n += (size_t)vs - 1;
    }
    size_t v = len;
    char *p = E->b->p + at;
    while (v >= 0x80) { *p++ = (char)(v | 0x80); v >>= 7; }
    *p = (char)v;
}

static lua_Integer enc_int(struct enc *E, int idx, lua_Integer lo, lua_Integer hi, const char *tname) {
    lua_State *L = E->L;
    if (lua_type(L, idx) != LUA_TNUMBER) enc_error(E, "expected integer, got %s", luaL_typename(L, idx));
    int ok;
    lua_Integer v = lua_tointegerx(L, idx, &ok);
    if (!ok) enc_error(E, "expected integer, got %f", lua_tonumber(L, idx));
    if (v < lo || v > hi) enc_error(E, "%I is out of range for %s", v, tname);
    return v;
}

static lua_Integer enc_enum(struct enc *E, const struct pb_enum *en, int idx) {
    lua_State *L = E->L;
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER) return enc_int(E, idx, INT32_MIN, INT32_MAX, "an enum");
    lua_rawgeti(L, E->names, en->name_ref);
    if (t != LUA_TSTRING) enc_error(E, "expected %s name or number, got %s", lua_tostring(L, -1), lua_typename(L, t));
    lua_rawgeti(L, E->names, en->byname_ref);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TNIL)
        enc_error(E, "unknown %s value \"%s\"", lua_tostring(L, -3), lua_tostring(L, idx));
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 3);
    return v;
}

/* The wire bits of a scalar of a varint or fixed-size type (not string/bytes/message). */
static uint64_t enc_scalar_bits(struct enc *E, const struct pb_vtype *vt, int idx) {
    lua_State *L = E->L;
    lua_Integer v;
    switch (vt->type) {
    case PT_INT32: return (uint64_t)enc_int(E, idx, INT32_MIN, INT32_MAX, "int32");  /* sign-extended */
    case PT_UINT32: return (uint64_t)enc_int(E, idx, 0, UINT32_MAX, "uint32");
    case PT_FIXED32: return (uint64_t)enc_int(E, idx, 0, UINT32_MAX, "fixed32");
    case PT_SFIXED32: return (uint32_t)enc_int(E, idx, INT32_MIN, INT32_MAX, "sfixed32");
    case PT_SINT32:
        v = enc_int(E, idx, INT32_MIN, INT32_MAX, "sint32");
        return (uint32_t)(((uint32_t)v << 1) ^ (uint32_t)-(v < 0));
    case PT_SINT64:
        v = enc_int(E, idx, LUA_MININTEGER, LUA_MAXINTEGER, "sint64");
        return ((uint64_t)v << 1) ^ (uint64_t)-(v < 0);
    case PT_INT64: case PT_UINT64: case PT_FIXED64: case PT_SFIXED64:
        return (uint64_t)enc_int(E, idx, LUA_MININTEGER, LUA_MAXINTEGER, "int64");
    case PT_BOOL:
        if (lua_type(L, idx) != LUA_TBOOLEAN) enc_error(E, "expected boolean, got %s", luaL_typename(L, idx));
        return (uint64_t)lua_toboolean(L, idx);
    case PT_ENUM: return (uint64_t)enc_enum(E, vt->en, idx);
    case PT_DOUBLE: case PT_FLOAT: {
        if (lua_type(L, idx) != LUA_TNUMBER) enc_error(E, "expected number, got %s", luaL_typename(L, idx));
        double d = (double)lua_tonumber(L, idx);
        if (vt->type == PT_DOUBLE) { uint64_t u; memcpy(&u, &d, 8); return u; }
        float f = (float)d;
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
    }
    default: return 0;
    }
}

static void put_bits(struct enc *E, int wire, uint64_t bits) {
    if (wire == WT_VARINT) put_varint(E, bits);
    else put_fixed(E, bits, wire == WT_I32 ? 4 : 8);
}

static void enc_message(struct enc *E, const struct pb_msg *m, int t);

/* Writes field `num` holding the Lua value at idx (absolute). skip_default: implicit presence, a
 * value equal to the type's default is not written. */
static void enc_value(struct enc *E, const struct pb_vtype *vt, uint32_t num, int idx, int skip_default) {
    lua_State *L = E->L;
    if (vt->type == PT_STRING || vt->type == PT_BYTES) {
        if (lua_type(L, idx) != LUA_TSTRING) enc_error(E, "expected string, got %s", luaL_typename(L, idx));
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        if (skip_default && !n) return;
        put_tag(E, num, WT_LEN);
        put_bytes(E, s, n);
    } else if (vt->type == PT_MESSAGE) {
        if (lua_type(L, idx) != LUA_TTABLE) {
            lua_rawgeti(L, E->names, vt->msg->name_ref);
            enc_error(E, "expected table (a %s message), got %s", lua_tostring(L, -1), luaL_typename(L, idx));
        }
        put_tag(E, num, WT_LEN);
        size_t at = len_begin(E);
        enc_message(E, vt->msg, idx);
        len_end(E, at);
    } else {
        uint64_t bits = enc_scalar_bits(E, vt, idx);
        if (skip_default && !bits) return;
        put_tag(E, num, vt->wire);
        put_bits(E, vt->wire, bits);
    }
}

static void enc_repeated(struct enc *E, const struct pb_field *f, int idx) {
    lua_State *L = E->L;
    struct eframe *fr = &E->fr[E->depth];
    if (lua_type(L, idx) != LUA_TTABLE) enc_error(E, "expected table (a list), got %s", luaL_typename(L, idx));
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n == 0) {
        lua_pushnil(L);
        if (lua_next(L, idx)) enc_error(E, "expected a list (keys 1..n), got a table with other keys");
        return;
    }
    fr->kind = FR_INDEX;
    if (f->v.wire != WT_LEN) {          /* packed */
        put_tag(E, f->number, WT_LEN);
        size_t at = len_begin(E);
        for (lua_Integer i = 1; i <= n; i++) {
            fr->index = i;
            lua_rawgeti(L, idx, i);
            put_bits(E, f->v.wire, enc_scalar_bits(E, &f->v, lua_gettop(L)));
            lua_pop(L, 1);
        }
        len_end(E, at);
    } else {
        for (lua_Integer i = 1; i <= n; i++) {
            fr->index = i;
            lua_rawgeti(L, idx, i);
            enc_value(E, &f->v, f->number, lua_gettop(L), 0);
            lua_pop(L, 1);
        }
    }
    fr->kind = FR_NONE;
}

static void enc_map(struct enc *E, const struct pb_field *f, int idx) {
    lua_State *L = E->L;
    struct eframe *fr = &E->fr[E->depth];
    if (lua_type(L, idx) != LUA_TTABLE) enc_error(E, "expected table (a map), got %s", luaL_typename(L, idx));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int k = lua_gettop(L) - 1;
        fr->keyidx = k;
        put_tag(E, f->number, WT_LEN);
        size_t at = len_begin(E);
        fr->kind = FR_MAPKEY;
        enc_value(E, &f->k, 1, k, 0);
        fr->kind = FR_KEY;
        enc_value(E, &f->v, 2, k + 1, 0);
        len_end(E, at);
        lua_pop(L, 1);
    }
    fr->kind = FR_NONE;
}

/* A oneof member f is set in table t: encode it unless another member is set too, in which case
 * t[oneof name] must say which one to send. */
static int oneof_pick(struct enc *E, const struct pb_msg *m, const struct pb_field *f, int t) {
    lua_State *L = E->L;
    const struct pb_oneof *o = &m->oneofs[f->oneof];
    int others = 0;
    for (int i = 0; i < o->nmembers; i++) {
        const struct pb_field *g = &m->fields[o->members[i]];
        if (g == f) continue;
        lua_rawgeti(L, E->names, g->name_ref);
        others += lua_rawget(L, t) != LUA_TNIL;
        lua_pop(L, 1);
    }
    if (!others) return 1;
    lua_rawgeti(L, E->names, o->name_ref);
    lua_pushvalue(L, -1);
    int ct = lua_rawget(L, t);
    int r = -1;
    if (ct == LUA_TSTRING)
        for (int i = 0; i < o->nmembers && r < 0; i++) {
            const struct pb_field *g = &m->fields[o->members[i]];
            lua_rawgeti(L, E->names, g->name_ref);
            if (lua_rawequal(L, -1, -2)) {
                lua_rawget(L, t);       /* value of the chosen member */
                if (!lua_isnil(L, -1)) r = g == f;
            }
            lua_pop(L, 1);
        }
    if (r < 0)
        enc_error(E, "oneof %s has more than one member set; set %s to the name of the one to send",
                  lua_tostring(L, -2), lua_tostring(L, -2));
    lua_pop(L, 2);
    return r;
}

static void enc_message(struct enc *E, const struct pb_msg *m, int t) {
    lua_State *L = E->L;
    if (E->depth >= PB_MAX_DEPTH)
        enc_error(E, "messages nested deeper than %d levels (does a table contain itself?)", PB_MAX_DEPTH);
    luaL_checkstack(L, 10, "pb.encode");
    struct eframe *fr = &E->fr[++E->depth];
    fr->m = m;
    fr->kind = FR_NONE;
    for (int i = 0; i < m->nfields; i++) {
        const struct pb_field *f = &m->fields[i];
        fr->f = f;
        lua_rawgeti(L, E->names, f->name_ref);
        if (lua_rawget(L, t) == LUA_TNIL) { lua_pop(L, 1); continue; }
        int v = lua_gettop(L);
        switch (f->label) {
        case PL_PLAIN: enc_value(E, &f->v, f->number, v, 1); break;
        case PL_OPTIONAL: enc_value(E, &f->v, f->number, v, 0); break;
        case PL_ONEOF: if (oneof_pick(E, m, f, t)) enc_value(E, &f->v, f->number, v, 0); break;
        case PL_REPEATED: enc_repeated(E, f, v); break;
        case PL_MAP: enc_map(E, f, v); break;
        }
        lua_pop(L, 1);
    }
    fr->f = NULL;
    E->depth--;
}

static int l_encode(lua_State *L) {
    struct pb_handle *h = luaL_checkudata(L, 1, MSG_MT);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_getiuservalue(L, 1, 2);                                     /* 3: names */
    struct pb_buf *b = lua_newuserdatauv(L, sizeof *b, 0);         /* 4 */
    b->p = b->init;
    b->n = 0;
    b->cap = sizeof b->init;
    luaL_setmetatable(L, BUF_MT);
    struct enc E;
    E.L = L;
    E.b = b;
    E.names = 3;
    E.depth = 0;
    E.fr[1].m = h->m;
    E.fr[1].f = NULL;
    enc_message(&E, h->m, 2);
    lua_pushlstring(L, b->p, b->n);
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Decoding                                                                                        */

struct dframe { const struct pb_msg *m; const struct pb_field *f; };

struct dec {
    lua_State *L;
    const uint8_t *base;
    int names;
    int errslot;            /* stack slot that receives the error message */
    int depth;
    struct dframe fr[PB_MAX_DEPTH + 2];
};

/* Records "Msg.field.sub: what (at byte N)" in the error slot; returns -1 for the caller to return. */
static int dec_fail(struct dec *D, const uint8_t *at, const char *fmt, ...) {
    lua_State *L = D->L;
    luaL_checkstack(L, 2 * D->depth + 8, "pb: error path");
    int n = 1;
    lua_rawgeti(L, D->names, D->fr[1].m->name_ref);
    for (int d = 1; d <= D->depth; d++) {
        if (!D->fr[d].f) break;
        lua_pushliteral(L, ".");
        lua_rawgeti(L, D->names, D->fr[d].f->name_ref);
        n += 2;
    }
    lua_pushliteral(L, ": ");
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_pushfstring(L, " (at byte %I)", (lua_Integer)(at - D->base));
    lua_concat(L, n + 3);
    lua_replace(L, D->errslot);
    return -1;
}

/* 0 on success; -1 truncated, -2 longer than 10 bytes. */
static inline int get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    if (p < end && *p < 0x80) { *out = *p; *pp = p + 1; return 0; }
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return -1;
        uint8_t c = *p++;
        v |= (uint64_t)(c & 0x7f) << (7 * i);
        if (c < 0x80) { *out = v; *pp = p; return 0; }
    }
    return -2;
}

static int read_varint(struct dec *D, const uint8_t **pp, const uint8_t *end, uint64_t *out, const char *what) {
    int r = get_varint(pp, end, out);
    if (r == 0) return 0;
    return dec_fail(D, *pp, r == -1 ? "truncated varint (%s)" : "varint longer than 10 bytes (%s)", what);
}

/* Reads a length prefix and checks that the bytes are there. */
static int read_len(struct dec *D, const uint8_t **pp, const uint8_t *end, const uint8_t **body, const uint8_t **bend) {
    uint64_t n = 0;
    const uint8_t *at = *pp;
    if (read_varint(D, pp, end, &n, "length")) return -1;
    if (n > (uint64_t)(end - *pp))
        return dec_fail(D, at, "length %I goes past the end of the input (%I bytes left)", (lua_Integer)(n > LUA_MAXINTEGER ? LUA_MAXINTEGER : n),
                        (lua_Integer)(end - *pp));
    *body = *pp;
    *bend = *pp + n;
    *pp = *bend;
    return 0;
}

static int read_fixed(struct dec *D, const uint8_t **pp, const uint8_t *end, int nbytes, uint64_t *out) {
    if (end - *pp < nbytes) return dec_fail(D, *pp, "truncated %d-byte value", nbytes);
    uint64_t v = 0;
    for (int i = 0; i < nbytes; i++) v |= (uint64_t)(*pp)[i] << (8 * i);
    *pp += nbytes;
    *out = v;
    return 0;
}

/* Skips an unknown field (or one whose wire type does not match the schema). */
static int skip_field(struct dec *D, uint32_t num, int wt, const uint8_t *tagat, const uint8_t **pp, const uint8_t *end,
                      int gdepth) {
    uint64_t v;
    const uint8_t *b, *e;
    switch (wt) {
    case WT_VARINT: {
        int r = get_varint(pp, end, &v);
        if (r == 0) return 0;
        return dec_fail(D, *pp, r == -1 ? "truncated varint (field %d)" : "varint longer than 10 bytes (field %d)", (int)num);
    }
    case WT_I64: return read_fixed(D, pp, end, 8, &v);
    case WT_I32: return read_fixed(D, pp, end, 4, &v);
    case WT_LEN: return read_len(D, pp, end, &b, &e);
    case WT_SGROUP:
        if (D->depth + gdepth >= PB_MAX_DEPTH) return dec_fail(D, tagat, "groups nested deeper than %d levels", PB_MAX_DEPTH);
        for (;;) {
            const uint8_t *at = *pp;
            if (at >= end) return dec_fail(D, tagat, "unterminated group (field %d)", (int)num);
            uint64_t tag = 0;
            if (read_varint(D, pp, end, &tag, "tag")) return -1;
            if (tag > UINT32_MAX) return dec_fail(D, at, "field number too large");
            uint32_t n = (uint32_t)(tag >> 3);
            int w = (int)(tag & 7);
            if (n == 0) return dec_fail(D, at, "field number 0");
            if (w == WT_EGROUP) {
                if (n != num) return dec_fail(D, at, "end-group tag of field %d inside group field %d", (int)n, (int)num);
                return 0;
            }
            if (skip_field(D, n, w, at, pp, end, gdepth + 1)) return -1;
        }
    case WT_EGROUP: return dec_fail(D, tagat, "unexpected end-group tag (field %d)", (int)num);
    default: return dec_fail(D, tagat, "invalid wire type %d (field %d)", wt, (int)num);
    }
}

static void push_enum(struct dec *D, const struct pb_enum *en, int32_t v) {
    lua_State *L = D->L;
    lua_rawgeti(L, D->names, en->bynum_ref);
    if (lua_rawgeti(L, -1, v) == LUA_TNIL) {
        lua_pop(L, 2);
        lua_pushinteger(L, v);          /* open enum: unknown numbers stay numbers */
    } else lua_remove(L, -2);
}

static void push_default(struct dec *D, const struct pb_vtype *vt);
static void dec_new_message(struct dec *D, const struct pb_msg *m);
static int dec_message(struct dec *D, const struct pb_msg *m, int t, const uint8_t *p, const uint8_t *end);

/* Pushes one value of type vt, whose wire type the caller has checked. */
static int dec_value(struct dec *D, const struct pb_vtype *vt, const uint8_t **pp, const uint8_t *end) {
    lua_State *L = D->L;
    uint64_t u = 0;   /* set by the readers; zeroed to quiet -Wmaybe-uninitialized */
    switch (vt->wire) {
    case WT_VARINT:
        if (read_varint(D, pp, end, &u, "value")) return -1;
        switch (vt->type) {
        case PT_INT32: lua_pushinteger(L, (int32_t)(uint32_t)u); break;
        case PT_UINT32: lua_pushinteger(L, (uint32_t)u); break;
        case PT_SINT32: {
            uint32_t x = (uint32_t)u;
            lua_pushinteger(L, (int32_t)((x >> 1) ^ (0u - (x & 1))));
            break;
        }
        case PT_SINT64: lua_pushinteger(L, (lua_Integer)((u >> 1) ^ (0 - (u & 1)))); break;
        case PT_BOOL: lua_pushboolean(L, u != 0); break;
        case PT_ENUM: push_enum(D, vt->en, (int32_t)(uint32_t)u); break;
        default: lua_pushinteger(L, (lua_Integer)u); break;      /* int64, uint64 (wraps past 2^63) */
        }
        return 0;
    case WT_I32:
        if (read_fixed(D, pp, end, 4, &u)) return -1;
        if (vt->type == PT_FLOAT) { float f; uint32_t x = (uint32_t)u; memcpy(&f, &x, 4); lua_pushnumber(L, f); }
        else if (vt->type == PT_SFIXED32) lua_pushinteger(L, (int32_t)(uint32_t)u);
        else lua_pushinteger(L, (lua_Integer)u);
        return 0;
    case WT_I64:
        if (read_fixed(D, pp, end, 8, &u)) return -1;
        if (vt->type == PT_DOUBLE) { double d; memcpy(&d, &u, 8); lua_pushnumber(L, d); }
        else lua_pushinteger(L, (lua_Integer)u);
        return 0;
    default: {
        const uint8_t *b, *e;
        if (read_len(D, pp, end, &b, &e)) return -1;
        if (vt->type != PT_MESSAGE) { lua_pushlstring(L, (const char *)b, (size_t)(e - b)); return 0; }
        dec_new_message(D, vt->msg);
        return dec_message(D, vt->msg, lua_gettop(L), b, e);
    }
    }
}

static void push_default(struct dec *D, const struct pb_vtype *vt) {
    lua_State *L = D->L;
    switch (vt->type) {
    case PT_DOUBLE: case PT_FLOAT: lua_pushnumber(L, 0.0); break;
    case PT_BOOL: lua_pushboolean(L, 0); break;
    case PT_STRING: case PT_BYTES: lua_pushliteral(L, ""); break;
    case PT_ENUM:
        if (vt->en->zero_ref) lua_rawgeti(L, D->names, vt->en->zero_ref);
        else lua_pushinteger(L, 0);
        break;
    case PT_MESSAGE: dec_new_message(D, vt->msg); break;
    default: lua_pushinteger(L, 0); break;
    }
}

/* Pushes a new table for m with proto3 defaults: plain scalars, empty lists and maps. */
static void dec_new_message(struct dec *D, const struct pb_msg *m) {
    lua_State *L = D->L;
    luaL_checkstack(L, 8, "pb.decode");
    lua_createtable(L, 0, m->nfields);
    for (int i = 0; i < m->nfields; i++) {
        const struct pb_field *f = &m->fields[i];
        if (f->label == PL_PLAIN && f->v.type != PT_MESSAGE) {
            lua_rawgeti(L, D->names, f->name_ref);
            push_default(D, &f->v);
        } else if (f->label == PL_REPEATED || f->label == PL_MAP) {
            lua_rawgeti(L, D->names, f->name_ref);
            lua_newtable(L);
        } else continue;
        lua_rawset(L, -3);
    }
}

/* Pushes t[name of f] as a table, creating it when absent (a list or a map). */
static void get_container(struct dec *D, const struct pb_field *f, int t) {
    lua_State *L = D->L;
    lua_rawgeti(L, D->names, f->name_ref);
    if (lua_rawget(L, t) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_rawgeti(L, D->names, f->name_ref);
        lua_pushvalue(L, -2);
        lua_rawset(L, t);
    }
}

static int dec_repeated(struct dec *D, const struct pb_field *f, int t, int wt, const uint8_t **pp, const uint8_t *end) {
    lua_State *L = D->L;
    get_container(D, f, t);
    int list = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    if (wt == WT_LEN && f->v.wire != WT_LEN) {      /* packed */
        const uint8_t *p, *e;
        if (read_len(D, pp, end, &p, &e)) return -1;
        while (p < e) {
            if (dec_value(D, &f->v, &p, e)) return -1;
            lua_rawseti(L, list, ++n);
        }
    } else {
        if (dec_value(D, &f->v, pp, end)) return -1;
        lua_rawseti(L, list, n + 1);
    }
    lua_pop(L, 1);
    return 0;
}

static int dec_map_entry(struct dec *D, const struct pb_field *f, int t, const uint8_t **pp, const uint8_t *end) {
    lua_State *L = D->L;
    const uint8_t *p, *e;
    if (read_len(D, pp, end, &p, &e)) return -1;
    get_container(D, f, t);
    int map = lua_gettop(L);
    lua_pushnil(L);
    lua_pushnil(L);
    int k = map + 1, v = map + 2;
    while (p < e) {
        const uint8_t *at = p;
        uint64_t tag = 0;
        if (read_varint(D, &p, e, &tag, "tag")) return -1;
        if (tag > UINT32_MAX) return dec_fail(D, at, "field number too large");
        uint32_t num = (uint32_t)(tag >> 3);
        int wt = (int)(tag & 7);
        if (num == 0) return dec_fail(D, at, "field number 0 in a map entry");
        if (num == 1 && wt == f->k.wire) {
            if (dec_value(D, &f->k, &p, e)) return -1;
            lua_replace(L, k);
        } else if (num == 2 && wt == f->v.wire) {
            if (f->v.type == PT_MESSAGE && lua_type(L, v) == LUA_TTABLE) {     /* repeated value: merge */
                const uint8_t *b, *be;
                if (read_len(D, &p, e, &b, &be) || dec_message(D, f->v.msg, v, b, be)) return -1;
            } else {
                if (dec_value(D, &f->v, &p, e)) return -1;
                lua_replace(L, v);
            }
        } else if (skip_field(D, num, wt, at, &p, e, 0)) return -1;
    }
    if (lua_isnil(L, k)) { push_default(D, &f->k); lua_replace(L, k); }
    if (lua_isnil(L, v)) { push_default(D, &f->v); lua_replace(L, v); }
    lua_rawset(L, map);
    lua_pop(L, 1);
    return 0;
}

/* A oneof member was decoded: clear the other members and record which one is set. */
static void oneof_set(struct dec *D, const struct pb_msg *m, const struct pb_field *f, int t) {
    lua_State *L = D->L;
    const struct pb_oneof *o = &m->oneofs[f->oneof];
    for (int i = 0; i < o->nmembers; i++) {
        const struct pb_field *g = &m->fields[o->members[i]];
        if (g == f) continue;
        lua_rawgeti(L, D->names, g->name_ref);
        lua_pushnil(L);
        lua_rawset(L, t);
    }
    lua_rawgeti(L, D->names, o->name_ref);
    lua_rawgeti(L, D->names, f->name_ref);
    lua_rawset(L, t);
}

static const struct pb_field *find_field(const struct pb_msg *m, uint32_t num) {
    if (num < m->ndirect) {
        int i = m->direct[num];
        return i ? &m->fields[i - 1] : NULL;
    }
    int lo = 0, hi = m->nfields - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t x = m->fields[mid].number;
        if (x == num) return &m->fields[mid];
        if (x < num) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* Decodes the fields in [p, end) into the table at t (merging into what is there). */
static int dec_message(struct dec *D, const struct pb_msg *m, int t, const uint8_t *p, const uint8_t *end) {
    lua_State *L = D->L;
    struct dframe *fr = &D->fr[++D->depth];
    fr->m = m;
    fr->f = NULL;
    if (D->depth > PB_MAX_DEPTH) { fr->m = NULL; D->depth--; return dec_fail(D, p, "messages nested deeper than %d levels", PB_MAX_DEPTH); }
    luaL_checkstack(L, 10, "pb.decode");
    while (p < end) {
        const uint8_t *at = p;
        uint64_t tag = 0;
        fr->f = NULL;
        if (read_varint(D, &p, end, &tag, "tag")) return -1;
        if (tag > UINT32_MAX) return dec_fail(D, at, "field number too large");
        uint32_t num = (uint32_t)(tag >> 3);
        int wt = (int)(tag & 7);
        if (num == 0) return dec_fail(D, at, "field number 0");
        const struct pb_field *f = find_field(m, num);
        if (!f) {
            if (skip_field(D, num, wt, at, &p, end, 0)) return -1;
            continue;
        }
        fr->f = f;
        if (f->label == PL_REPEATED) {
            if (wt == f->v.wire || (wt == WT_LEN && f->v.wire != WT_LEN)) {
                if (dec_repeated(D, f, t, wt, &p, end)) return -1;
                continue;
            }
        } else if (f->label == PL_MAP) {
            if (wt == WT_LEN) {
                if (dec_map_entry(D, f, t, &p, end)) return -1;
                continue;
            }
        } else if (wt == f->v.wire) {
            if (f->label == PL_ONEOF) oneof_set(D, m, f, t);
            if (f->v.type == PT_MESSAGE) {
                lua_rawgeti(L, D->names, f->name_ref);
                if (lua_rawget(L, t) == LUA_TTABLE) {           /* a message seen twice is merged */
                    const uint8_t *b, *e;
                    if (read_len(D, &p, end, &b, &e) || dec_message(D, f->v.msg, lua_gettop(L), b, e)) return -1;
                    lua_pop(L, 1);
                    continue;
                }
                lua_pop(L, 1);
            }
            lua_rawgeti(L, D->names, f->name_ref);
            if (dec_value(D, &f->v, &p, end)) return -1;
            lua_rawset(L, t);
            continue;
        }
        /* a known field with another wire type is an unknown field, as protobuf parsers do */
        fr->f = NULL;
        if (skip_field(D, num, wt, at, &p, end, 0)) return -1;
    }
    fr->f = NULL;
    D->depth--;
    return 0;
}

static int l_decode(lua_State *L) {
    struct pb_handle *h = luaL_checkudata(L, 1, MSG_MT);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    lua_settop(L, 2);
    lua_getiuservalue(L, 1, 2);         /* 3: names */
    lua_pushnil(L);                     /* 4: error message */
    struct dec D;
    D.L = L;
    D.base = (const uint8_t *)s;
    D.names = 3;
    D.errslot = 4;
    D.depth = 0;
    D.fr[1].m = h->m;
    D.fr[1].f = NULL;
    dec_new_message(&D, h->m);          /* 5 */
    if (dec_message(&D, h->m, 5, D.base, D.base + n) == 0) {
        lua_settop(L, 5);
        return 1;
    }
    lua_pushnil(L);
    if (lua_isnil(L, lua_upvalueindex(1))) {        /* runbox.errors not available: a string */
        lua_pushvalue(L, 4);
        return 2;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushliteral(L, "pb");
    lua_pushvalue(L, 4);
    lua_call(L, 2, 1);
    return 2;
}

/* ---------------------------------------------------------------------------------------------- */

int luaopen_runbox_pb(lua_State *L) {
    luaL_newmetatable(L, SCHEMA_MT);
    lua_pushcfunction(L, schema_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newmetatable(L, MSG_MT);
    lua_pushcfunction(L, handle_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "pb.Message");
    lua_setfield(L, -2, "__metatable");
    luaL_newmetatable(L, BUF_MT);
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newmetatable(L, ENUM_MT);
    lua_pop(L, 4);

    lua_newtable(L);
    lua_pushcfunction(L, l_schema);
    lua_setfield(L, -2, "schema");
    lua_pushcfunction(L, l_enum);
    lua_setfield(L, -2, "enum");
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    /* decode errors are runbox.errors objects (code "pb") when that module can be loaded */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "runbox.errors");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) lua_getfield(L, -1, "new");
    else lua_pushnil(L);
    lua_remove(L, -2);
    lua_pushcclosure(L, l_decode, 1);
    lua_setfield(L, -2, "decode");
    return 1;
}
