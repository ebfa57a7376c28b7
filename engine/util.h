/* runbox.util: clocks, ids, SHA-256, base64, environment and .env files. See docs/api/util.md. */
#ifndef RUNBOX_UTIL_H
#define RUNBOX_UTIL_H
#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* SHA-256 (FIPS 180-4), incremental: init, update any number of times, final. */
typedef struct {
    uint32_t h[8];
    uint64_t bytes;          /* message length so far */
    unsigned char block[64];
    size_t used;             /* bytes waiting in block */
} rb_sha256_ctx;

void rb_sha256_init(rb_sha256_ctx *c);
void rb_sha256_update(rb_sha256_ctx *c, const void *data, size_t n);
void rb_sha256_final(rb_sha256_ctx *c, unsigned char out[32]);

/* Fills buf with n bytes from getrandom(2); returns 0, or -1 with errno. */
int rb_random_bytes(void *buf, size_t n);

int luaopen_runbox_util(lua_State *L);

#endif
