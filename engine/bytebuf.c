#include "bytebuf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int buf_add(struct buf *b, const void *s, size_t n) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + n > b->cap && b->off) {          /* reclaim the consumed front first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2) return -1;
            cap *= 2;
        }
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

void buf_reserve(struct buf *b, size_t cap) {
    if (b->cap >= cap || b->len) return;
    char *q = realloc(b->p, cap);
    if (!q) return;         /* buf_add will try again */
    b->p = q;
    b->cap = cap;
}

void buf_free(struct buf *b) { free(b->p); memset(b, 0, sizeof *b); }
