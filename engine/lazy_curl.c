/* The curl_* functions runbox calls, forwarded to libcurl loaded on first use (see lazy.h).
 * Including curl.h makes the compiler check every definition here against the real prototype. */
#define CURL_DISABLE_TYPECHECK  /* else typecheck-gcc.h turns setopt/getinfo into macros */
#include "lazy.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>

/* X(ret, name, fail, params, args): a function returning ret; fail is returned when libcurl is
 * missing. V(name, params, args): a void function. The variadic ones are written out below. */
#define CURL_FUNCS(X, V) \
    X(CURLcode, curl_global_init, CURLE_FAILED_INIT, (long flags), (flags)) \
    V(curl_global_cleanup, (void), ()) \
    X(char *, curl_version, (char *)"libcurl (not loaded)", (void), ()) \
    X(CURL *, curl_easy_init, NULL, (void), ()) \
    V(curl_easy_cleanup, (CURL *c), (c)) \
    X(CURLcode, curl_easy_pause, CURLE_FAILED_INIT, (CURL *c, int mask), (c, mask)) \
    X(const char *, curl_easy_strerror, "libcurl not loaded", (CURLcode e), (e)) \
    X(CURLM *, curl_multi_init, NULL, (void), ()) \
    X(CURLMcode, curl_multi_cleanup, CURLM_INTERNAL_ERROR, (CURLM *m), (m)) \
    X(CURLMcode, curl_multi_add_handle, CURLM_INTERNAL_ERROR, (CURLM *m, CURL *c), (m, c)) \
    X(CURLMcode, curl_multi_remove_handle, CURLM_INTERNAL_ERROR, (CURLM *m, CURL *c), (m, c)) \
    X(CURLMsg *, curl_multi_info_read, NULL, (CURLM *m, int *left), (m, left)) \
    X(CURLMcode, curl_multi_socket_action, CURLM_INTERNAL_ERROR, \
      (CURLM *m, curl_socket_t s, int events, int *running), (m, s, events, running)) \
    X(const char *, curl_multi_strerror, "libcurl not loaded", (CURLMcode e), (e)) \
    X(struct curl_slist *, curl_slist_append, NULL, (struct curl_slist *l, const char *s), (l, s)) \
    V(curl_slist_free_all, (struct curl_slist *l), (l))

#define CURL_VARIADIC(Y) Y(curl_easy_setopt) Y(curl_easy_getinfo) Y(curl_multi_setopt)

RB_LAZY_LIBRARY(rb_lazy_curl_load, "libcurl", "RUNBOX_LIBCURL", "libcurl4", CURL_FUNCS, CURL_VARIADIC, "libcurl.so.4", "libcurl.so")

/* setopt's third argument has the type given by the range its option number lies in (curl.h's
 * CURLOPTTYPE_*; STRINGPOINT, SLISTPOINT and CBPOINT are OBJECTPOINT, VALUES is LONG), so it is
 * read and passed on as that type. curl_multi_setopt numbers its options the same way. */
typedef void (*any_fn)(void);
#define FORWARD_OPT(fn, h, opt, ap) \
    ((opt) < CURLOPTTYPE_OBJECTPOINT ? fn(h, opt, va_arg(ap, long)) \
     : (opt) < CURLOPTTYPE_FUNCTIONPOINT ? fn(h, opt, va_arg(ap, void *)) \
     : (opt) < CURLOPTTYPE_OFF_T ? fn(h, opt, va_arg(ap, any_fn)) \
     : (opt) < CURLOPTTYPE_BLOB ? fn(h, opt, va_arg(ap, curl_off_t)) \
     : fn(h, opt, va_arg(ap, struct curl_blob *)))

CURLcode curl_easy_setopt(CURL *c, CURLoption opt, ...) {
    if (!ready()) return CURLE_FAILED_INIT;
    va_list ap;
    va_start(ap, opt);
    CURLcode rc = FORWARD_OPT(real.curl_easy_setopt, c, opt, ap);
    va_end(ap);
    return rc;
}

CURLMcode curl_multi_setopt(CURLM *m, CURLMoption opt, ...) {
    if (!ready()) return CURLM_INTERNAL_ERROR;
    va_list ap;
    va_start(ap, opt);
    CURLMcode rc = FORWARD_OPT(real.curl_multi_setopt, m, opt, ap);
    va_end(ap);
    return rc;
}

/* Every CURLINFO_* takes a pointer to where the result goes. */
CURLcode curl_easy_getinfo(CURL *c, CURLINFO info, ...) {
    if (!ready()) return CURLE_FAILED_INIT;
    va_list ap;
    va_start(ap, info);
    void *out = va_arg(ap, void *);
    va_end(ap);
    return real.curl_easy_getinfo(c, info, out);
}
