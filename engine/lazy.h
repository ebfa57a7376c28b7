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

#endif
