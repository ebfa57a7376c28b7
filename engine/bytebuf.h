/* A growable byte buffer with a read offset: bytes p[off..len) are unread. Shared by the modules
 * that queue bytes between the network (or libarchive) and Lua. */
#ifndef RUNBOX_BYTEBUF_H
#define RUNBOX_BYTEBUF_H
#include <stddef.h>

struct buf { char *p; size_t off, len, cap; };

/* Appends n bytes (reusing the consumed front before growing). 0, or -1 when out of memory. */
int buf_add(struct buf *b, const void *s, size_t n);
/* Makes an empty buffer hold cap bytes, so a busy stream allocates once. */
void buf_reserve(struct buf *b, size_t cap);
void buf_free(struct buf *b);
static inline size_t buf_avail(const struct buf *b) { return b->len - b->off; }

#endif
