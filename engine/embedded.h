/* Lua library modules and stock recipes compiled into the binary (see tools/embed.c). */
#ifndef RUNBOX_EMBEDDED_H
#define RUNBOX_EMBEDDED_H
#include <stddef.h>

struct rb_embedded {
    const char *name;       /* "runbox.sched" or recipe name "demo" */
    const char *kind;       /* "module" or "recipe" */
    const char *chunkname;  /* "@lua/runbox/sched.lua": tracebacks name the source file */
    const unsigned char *data;
    size_t len;
};

extern const struct rb_embedded rb_embedded_files[];
extern const int rb_embedded_count;

#endif
