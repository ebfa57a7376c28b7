/* Shared part of the lazy library loaders (see lazy.h). */
#include "lazy.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

void *rb_lazy_open(const char *lib, const char *env, const char *const names[], const char *pkg,
                   char *err, size_t n) {
    const char *path = getenv(env);
    if (path && *path) {
        void *h = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
        if (!h) snprintf(err, n, "cannot load %s (%s, named by %s); install the Debian "
                         "package %s or point %s at the library", lib, dlerror(), env, pkg, env);
        return h;
    }
    /* Report why the first (proper soname) failed; the later names are fallbacks. */
    for (size_t i = 0; names[i]; i++) {
        void *h = dlopen(names[i], RTLD_LAZY | RTLD_LOCAL);
        if (h) return h;
        const char *why = dlerror();
        if (i == 0) snprintf(err, n, "cannot load %s (%s); install the Debian package %s "
                             "or set %s to the library's path", lib, why, pkg, env);
    }
    return NULL;
}

void rb_lazy_report(int *flag, const char *err) {
    if (*flag) return;
    *flag = 1;
    fprintf(stderr, "runbox: %s\n", err);
}

int rb_lazy_missing(void *h, const char *lib, const char *sym, const char *pkg, char *err,
                    size_t n) {
    snprintf(err, n, "the %s that was loaded lacks %s (too old?); install the Debian "
             "package %s", lib, sym, pkg);
    dlclose(h);
    return -1;
}
