/* The OpenSSL functions engine/h2.c calls, forwarded to libssl loaded on first use (see lazy.h):
 * libssl and libcrypto cost about a millisecond at every start, and only TLS gRPC needs them.
 * dlsym on the libssl handle also finds libcrypto's functions (a dependency of libssl). */
#include "h2.h"
#include "lazy.h"

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define SSL_FUNCS(X, V) \
    X(const SSL_METHOD *, TLS_client_method, NULL, (void), ()) \
    X(SSL_CTX *, SSL_CTX_new, NULL, (const SSL_METHOD *m), (m)) \
    V(SSL_CTX_free, (SSL_CTX *c), (c)) \
    X(long, SSL_CTX_ctrl, 0, (SSL_CTX *c, int cmd, long l, void *p), (c, cmd, l, p)) \
    X(uint64_t, SSL_CTX_set_options, 0, (SSL_CTX *c, uint64_t op), (c, op)) \
    X(int, SSL_CTX_set_default_verify_paths, 0, (SSL_CTX *c), (c)) \
    X(int, SSL_CTX_load_verify_locations, 0, (SSL_CTX *c, const char *f, const char *d), (c, f, d)) \
    V(SSL_CTX_set_verify, (SSL_CTX *c, int mode, SSL_verify_cb cb), (c, mode, cb)) \
    X(int, SSL_CTX_set_alpn_protos, 1, (SSL_CTX *c, const unsigned char *p, unsigned int n), (c, p, n)) \
    X(SSL *, SSL_new, NULL, (SSL_CTX *c), (c)) \
    V(SSL_free, (SSL *s), (s)) \
    X(int, SSL_set_fd, 0, (SSL *s, int fd), (s, fd)) \
    V(SSL_set_connect_state, (SSL *s), (s)) \
    X(long, SSL_ctrl, 0, (SSL *s, int cmd, long l, void *p), (s, cmd, l, p)) \
    X(int, SSL_set1_host, 0, (SSL *s, const char *h), (s, h)) \
    X(X509_VERIFY_PARAM *, SSL_get0_param, NULL, (SSL *s), (s)) \
    X(int, X509_VERIFY_PARAM_set1_ip_asc, 0, (X509_VERIFY_PARAM *p, const char *ip), (p, ip)) \
    X(int, SSL_do_handshake, -1, (SSL *s), (s)) \
    X(int, SSL_read, -1, (SSL *s, void *b, int n), (s, b, n)) \
    X(int, SSL_write, -1, (SSL *s, const void *b, int n), (s, b, n)) \
    X(int, SSL_get_error, SSL_ERROR_SSL, (const SSL *s, int rc), (s, rc)) \
    V(SSL_get0_alpn_selected, (const SSL *s, const unsigned char **d, unsigned int *n), (s, d, n)) \
    X(long, SSL_get_verify_result, 0, (const SSL *s), (s)) \
    X(const char *, X509_verify_cert_error_string, "?", (long n), (n)) \
    X(unsigned long, ERR_get_error, 0, (void), ()) \
    V(ERR_clear_error, (void), ()) \
    V(ERR_error_string_n, (unsigned long e, char *b, size_t n), (e, b, n)) \
    X(const char *, OpenSSL_version, "OpenSSL (not loaded)", (int t), (t))

#define SSL_VARIADIC(Y)

RB_LAZY_LIBRARY(rb_lazy_ssl_load, "OpenSSL (libssl)", "RUNBOX_LIBSSL", "libssl3", SSL_FUNCS, SSL_VARIADIC,
                "libssl.so.3", "libssl.so")
