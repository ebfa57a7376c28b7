/* The archive_* functions runbox calls, forwarded to libarchive loaded on first use (see
 * lazy.h). Including the real headers makes the compiler check every definition here. */
#define _GNU_SOURCE     /* vasprintf */
#include "lazy.h"

#include <archive.h>
#include <archive_entry.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct archive A;
typedef struct archive_entry E;
typedef struct archive_entry_linkresolver R;

/* X(ret, name, fail, params, args): a function returning ret; fail is returned when libarchive
 * is missing. V(name, params, args): a void function. archive_set_error (variadic) is below. */
#define ARCHIVE_FUNCS(X, V) \
    X(A *, archive_read_new, NULL, (void), ()) \
    X(int, archive_read_support_filter_none, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_filter_gzip, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_filter_bzip2, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_filter_xz, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_filter_zstd, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_filter_lz4, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_support_format_tar, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_read_open_filename, ARCHIVE_FATAL, (A *a, const char *f, size_t block), \
      (a, f, block)) \
    X(int, archive_read_open_memory, ARCHIVE_FATAL, (A *a, const void *p, size_t n), (a, p, n)) \
    X(int, archive_read_next_header, ARCHIVE_FATAL, (A *a, E **e), (a, e)) \
    X(int, archive_read_data_block, ARCHIVE_FATAL, \
      (A *a, const void **p, size_t *n, la_int64_t *off), (a, p, n, off)) \
    X(int, archive_read_free, ARCHIVE_FATAL, (A *a), (a)) \
    X(A *, archive_write_new, NULL, (void), ()) \
    X(A *, archive_write_disk_new, NULL, (void), ()) \
    X(int, archive_write_disk_set_options, ARCHIVE_FATAL, (A *a, int flags), (a, flags)) \
    X(int, archive_write_add_filter_none, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_add_filter_gzip, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_add_filter_zstd, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_set_filter_option, ARCHIVE_FATAL, \
      (A *a, const char *m, const char *o, const char *v), (a, m, o, v)) \
    X(int, archive_write_set_format_gnutar, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_set_bytes_per_block, ARCHIVE_FATAL, (A *a, int n), (a, n)) \
    X(int, archive_write_open, ARCHIVE_FATAL, (A *a, void *ud, archive_open_callback *o, \
      archive_write_callback *w, archive_close_callback *c), (a, ud, o, w, c)) \
    X(int, archive_write_header, ARCHIVE_FATAL, (A *a, E *e), (a, e)) \
    X(la_ssize_t, archive_write_data, ARCHIVE_FATAL, (A *a, const void *p, size_t n), (a, p, n)) \
    X(la_ssize_t, archive_write_data_block, ARCHIVE_FATAL, \
      (A *a, const void *p, size_t n, la_int64_t off), (a, p, n, off)) \
    X(int, archive_write_finish_entry, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_close, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_fail, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_write_free, ARCHIVE_FATAL, (A *a), (a)) \
    X(int, archive_errno, 0, (A *a), (a)) \
    X(const char *, archive_error_string, "libarchive not loaded", (A *a), (a)) \
    X(int, archive_format, 0, (A *a), (a)) \
    X(E *, archive_entry_new, NULL, (void), ()) \
    X(E *, archive_entry_clear, NULL, (E *e), (e)) \
    V(archive_entry_free, (E *e), (e)) \
    V(archive_entry_copy_stat, (E *e, const struct stat *st), (e, st)) \
    V(archive_entry_copy_hardlink, (E *e, const char *s), (e, s)) \
    V(archive_entry_copy_symlink, (E *e, const char *s), (e, s)) \
    V(archive_entry_set_pathname, (E *e, const char *s), (e, s)) \
    V(archive_entry_set_perm, (E *e, __LA_MODE_T m), (e, m)) \
    V(archive_entry_set_size, (E *e, la_int64_t n), (e, n)) \
    V(archive_entry_unset_atime, (E *e), (e)) \
    V(archive_entry_unset_birthtime, (E *e), (e)) \
    V(archive_entry_unset_ctime, (E *e), (e)) \
    X(const char *, archive_entry_pathname, NULL, (E *e), (e)) \
    X(const char *, archive_entry_hardlink, NULL, (E *e), (e)) \
    X(const char *, archive_entry_symlink, NULL, (E *e), (e)) \
    X(__LA_MODE_T, archive_entry_filetype, 0, (E *e), (e)) \
    X(__LA_MODE_T, archive_entry_perm, 0, (E *e), (e)) \
    X(la_int64_t, archive_entry_size, 0, (E *e), (e)) \
    X(int, archive_entry_size_is_set, 0, (E *e), (e)) \
    X(la_int64_t, archive_entry_uid, 0, (E *e), (e)) \
    X(la_int64_t, archive_entry_gid, 0, (E *e), (e)) \
    X(time_t, archive_entry_mtime, 0, (E *e), (e)) \
    X(R *, archive_entry_linkresolver_new, NULL, (void), ()) \
    V(archive_entry_linkresolver_set_strategy, (R *r, int format), (r, format)) \
    V(archive_entry_linkify, (R *r, E **e, E **spare), (r, e, spare)) \
    V(archive_entry_linkresolver_free, (R *r), (r))

#define ARCHIVE_VARIADIC(Y) Y(archive_set_error)

RB_LAZY_LIBRARY(rb_lazy_archive_load, "libarchive", "RUNBOX_LIBARCHIVE", "libarchive13", ARCHIVE_FUNCS, ARCHIVE_VARIADIC, "libarchive.so.13", "libarchive.so")

/* A va_list cannot be passed to a variadic function: format here, hand over the text. */
void archive_set_error(A *a, int code, const char *fmt, ...) {
    if (!ready()) return;
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = vasprintf(&msg, fmt, ap);
    va_end(ap);
    real.archive_set_error(a, code, "%s", len >= 0 ? msg : fmt);   /* unformatted if no memory */
    if (len >= 0) free(msg);
}
