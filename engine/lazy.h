/* Lazy loading of libcurl and libarchive.
 *
 * runbox does not link either library: each costs milliseconds at every start (libcurl pulls ~30
 * libraries built with BIND_NOW), and most runs use neither. engine/lazy_curl.c and
 * engine/lazy_archive.c define the curl_* / archive_* functions runbox calls; each forwards to the
 * real one, found with dlopen/dlsym on first use. The Lua modules that need a library
 * (runbox.c.http, runbox.c.tar) load it when required, so a missing library becomes a Lua error
 * naming the library and the Debian package to install. */
#ifndef RB_LAZY_H
#define RB_LAZY_H

#include <stddef.h>

/* Loads the library and resolves every function runbox uses (once; later calls are free).
 * Returns 0, or -1 with a message for the user in err. RUNBOX_LIBCURL / RUNBOX_LIBARCHIVE, when
 * set, name the file to load instead of the usual sonames. */
int rb_lazy_curl_load(char *err, size_t n);
int rb_lazy_archive_load(char *err, size_t n);

/* For the two files above: dlopens the file named by the environment variable `env` if set,
 * else the first of `names` (NULL-terminated) that loads. NULL with a message in err on failure;
 * `lib` and `pkg` (the Debian package) go into the message. */
void *rb_lazy_open(const char *lib, const char *env, const char *const names[], const char *pkg,
                   char *err, size_t n);

/* For the two files: fills err for a library without symbol `sym`, closes h; returns -1. */
int rb_lazy_missing(void *h, const char *lib, const char *sym, const char *pkg, char *err,
                    size_t n);

/* Prints err to stderr once per library (flag): for a forwarder called while the library is
 * missing, which has no Lua state to raise an error in. */
void rb_lazy_report(int *flag, const char *err);

/* The machinery both forwarder files share. With FUNCS(X, V) listing the library's functions
 * (X(ret, name, fail, params, args) for a function returning ret, fail when the library is missing;
 * V(name, params, args) for a void one) and VARIADIC(Y) naming the variadic ones (written out by
 * hand), RB_LAZY_LIBRARY defines the table `real` of the library's own functions, the loader
 * load_fn(err, n), a static ready() for the forwarders, and a forwarder for every FUNCS entry. */
#define RB_LAZY_PTR(name) __typeof__(name) *name;
#define RB_LAZY_PTR_X(ret, name, ...) RB_LAZY_PTR(name)
#define RB_LAZY_PTR_V(name, ...) RB_LAZY_PTR(name)
#define RB_LAZY_RESOLVE(name) \
    if (!(real.name = (__typeof__(real.name))dlsym(h, #name))) \
        return rb_lazy_missing(h, lib_name, #name, pkg_name, err, n);
#define RB_LAZY_RESOLVE_X(ret, name, ...) RB_LAZY_RESOLVE(name)
#define RB_LAZY_RESOLVE_V(name, ...) RB_LAZY_RESOLVE(name)
#define RB_LAZY_FORWARD_X(ret, name, fail, params, args) \
    ret name params { return ready() ? real.name args : fail; }
#define RB_LAZY_FORWARD_V(name, params, args) \
    void name params { if (ready()) real.name args; }

#define RB_LAZY_LIBRARY(load_fn, lib, env, pkg, FUNCS, VARIADIC, ...) \
    static struct { FUNCS(RB_LAZY_PTR_X, RB_LAZY_PTR_V) VARIADIC(RB_LAZY_PTR) } real; \
    static int loaded, reported; \
    int load_fn(char *err, size_t n) { \
        static const char *const names[] = {__VA_ARGS__, NULL}; \
        static const char *const lib_name = lib, *const pkg_name = pkg; \
        if (loaded) return 0; \
        void *h = rb_lazy_open(lib_name, env, names, pkg_name, err, n); \
        if (!h) return -1; \
        FUNCS(RB_LAZY_RESOLVE_X, RB_LAZY_RESOLVE_V) \
        VARIADIC(RB_LAZY_RESOLVE) \
        loaded = 1; \
        return 0; \
    } \
    /* Normally the Lua module loaded the library already; this covers any other caller. */ \
    static int ready(void) { \
        if (__builtin_expect(loaded, 1)) return 1; \
        char err[1024]; \
        if (load_fn(err, sizeof err) == 0) return 1; \
        rb_lazy_report(&reported, err); \
        return 0; \
    } \
    FUNCS(RB_LAZY_FORWARD_X, RB_LAZY_FORWARD_V)

#endif
