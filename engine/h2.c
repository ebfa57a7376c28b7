/* runbox.c.h2: HTTP/2 client connections and streams on nghttp2, driven by the engine loop.
 *
 * A connection owns a non-blocking socket (TCP or unix; TLS with ALPN "h2" through OpenSSL, or
 * cleartext with prior knowledge) and an nghttp2 client session. nghttp2 does no I/O itself: the
 * loop tells us when the socket is readable or writable, we feed what we read to
 * nghttp2_session_mem_recv and write what nghttp2_session_mem_send produces. Nothing here blocks:
 * host names are resolved in a short-lived thread that reports through a pipe.
 *
 * A stream is one request. Its response body is buffered here until Lua takes it, and the HTTP/2
 * flow-control window is reopened (nghttp2_session_consume) only then, so a slow reader holds
 * at most a window of data per stream (and per connection), never more. Each stream has two loop
 * ids for Lua to park on: `rid` is notified when there is news to read (headers, body, the end),
 * `sid` when the request body can take more. The Lua side is lua/runbox/h2.lua.
 *
 * Lifetimes: connections and streams live in Lua userdata. A stream keeps its connection alive (a
 * user value). Whatever points at a struct from outside (nghttp2's stream user data, loop fd
 * callbacks and timers, a resolver job) is detached before Lua frees it. */
#define _GNU_SOURCE
#include "h2.h"
#include "loop.h"
#include "bytebuf.h"
#include "luax.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <lauxlib.h>

#define CONN_MT "runbox.h2.connection"
#define STREAM_MT "runbox.h2.stream"

#define STREAM_WINDOW (1 << 20)         /* response bytes a stream may have unread */
#define CONN_WINDOW (16 << 20)          /* ... and all streams of a connection together */
#define UPLOAD_LIMIT (1u << 20)         /* request body bytes buffered before write() says "full" */
#define HEADER_LIMIT (1u << 20)         /* response header bytes accepted per stream */
#define BODY_KEEP (16u << 10)           /* body buffer capacity a stream keeps when drained */
#define OUT_BATCH (256u << 10)          /* frames gathered before a write */
#define DEFAULT_CONNECT_TIMEOUT 300.0   /* as libcurl */


/* Why a stream failed; the names are what Lua sees. */
enum { F_NONE, F_CONNECT, F_TLS, F_LOST, F_RESET, F_REFUSED, F_GOAWAY, F_PROTOCOL, F_TIMEOUT,
       F_CANCELLED };
static const char *const KIND[] = {"", "connect", "tls", "lost", "reset", "refused", "goaway",
                                   "protocol", "timeout", "cancelled"};

enum { C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_READY, C_CLOSED };
static const char *const STATE[] = {"connecting", "connecting", "connecting", "ready", "closed"};

struct conn;

struct stream {
    struct conn *c;             /* NULL once detached from the connection */
    struct stream *next, *prev; /* the connection's list */
    int32_t id;
    rb_id rid, sid;
    int open;                   /* nghttp2 has the stream (submitted, not closed) */
    uint64_t headers_at;        /* 1 + bytes queued for the socket before our HEADERS; 0: not yet */
    /* response */
    int head_done, status, remote_ended;
    struct buf head, trail;     /* header lists: (u32 len, name, u32 len, value)* */
    int nhead, ntrail;
    struct buf body;
    size_t unconsumed;          /* body bytes buffered and not yet given back to flow control */
    size_t body_peak, received;
    size_t last_read;           /* bytes of the latest read: the size the buffer is made next */
    int peer_rst;
    uint32_t rst_code;
    /* request body: a Lua string (kept alive as a user value) or streamed by Lua */
    int has_body, streaming, up_done, deferred, up_full;
    const char *body_str;
    size_t body_len, body_off;
    struct buf up;
    size_t up_limit, sent;
    /* the end */
    int done, fail, was_sent;
    uint32_t h2_code;
    char *msg;
    rb_timer timer;
    int timer_on;
    double timeout;
};

struct resolve_job {
    struct conn *c;             /* NULL when the connection went away meanwhile */
    char *host;
    char port[8];
    int fds[2];
    int rc, err, finished;
    struct addrinfo *res;
};

struct conn {
    int state, fd, tls, insecure;
    uint32_t armed;
    char *host, *unix_path, *ca_file, *where;
    int port, local_port;
    struct addrinfo *addrs, *next_addr;
    struct resolve_job *job;
    char *last_err;             /* of the latest failed connect attempt */
    SSL *ssl;
    int hs_want;                /* EPOLLIN / EPOLLOUT the TLS handshake waits for */
    int read_wants_write;       /* TLS: SSL_read needs the socket writable */
    nghttp2_session *ss;
    struct buf out;
    uint64_t appended, written; /* bytes ever queued for the socket / written to it */
    int want_out;
    struct stream *streams;
    int active;                 /* streams in the list that have not ended */
    unsigned long total;        /* streams ever started */
    double connect_timeout, idle_since;
    rb_timer ctimer, ftimer;
    int ctimer_on, ftimer_on;
    int goaway;
    int32_t goaway_last;
    uint32_t goaway_code;
    char *goaway_text;
    int settings_seen;
    int fail;
    char *error;
    int32_t stream_window, conn_window;
};

static nghttp2_session_callbacks *callbacks;

/* ---- small helpers ---- */

static char *vformat(const char *fmt, va_list ap) {
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) return NULL;
    return s;
}

static char *format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

static void set_str(char **dst, char *s) { free(*dst); *dst = s; }

static int hlist_add(struct buf *b, int *n, const uint8_t *name, size_t nlen, const uint8_t *value,
                     size_t vlen) {
    uint32_t a = (uint32_t)nlen, v = (uint32_t)vlen;
    if (buf_avail(b) + nlen + vlen + 8 > HEADER_LIMIT) return -1;
    if (buf_add(b, &a, 4) || buf_add(b, name, nlen) || buf_add(b, &v, 4) || buf_add(b, value, vlen))
        return -1;
    (*n)++;
    return 0;
}

/* Pushes a header list as a flat Lua array {name1, value1, name2, value2, ...}. */
static void push_hlist(lua_State *L, const struct buf *b, int n) {
    lua_createtable(L, 2 * n, 0);
    const char *p = b->p + b->off, *end = b->p + b->len;
    int i = 0;
    while (p + 4 <= end) {
        uint32_t len;
        memcpy(&len, p, 4);
        lua_pushlstring(L, p + 4, len);
        lua_rawseti(L, -2, ++i);
        p += 4 + len;
    }
}

/* ---- streams ---- */

static void schedule_flush(struct conn *c);

static void stream_notify(struct stream *s) { rb_notify(s->rid); rb_notify(s->sid); }

static void stop_stream_timer(struct stream *s) {
    if (s->timer_on) rb_timer_stop(s->timer);
    s->timer_on = 0;
}

/* The stream has ended: successfully (kind F_NONE, the peer ended its side) or with an error. */
static void stream_end(struct stream *s, int kind, uint32_t code, char *msg) {
    if (s->done) { free(msg); return; }
    s->done = 1;
    s->fail = kind;
    s->h2_code = code;
    set_str(&s->msg, msg);
    stop_stream_timer(s);
    if (s->c) {
        struct conn *c = s->c;
        s->was_sent = s->headers_at && c->written >= s->headers_at;
        if (--c->active == 0) c->idle_since = rb_now();
    }
    stream_notify(s);
}

/* Unhooks an ended stream from its connection; body bytes it still holds are handed back to
 * flow control, since nobody will read them through the connection any more. */
static void stream_detach(struct stream *s) {
    struct conn *c = s->c;
    if (!c) return;
    if (c->ss) {
        if (s->open) nghttp2_session_set_stream_user_data(c->ss, s->id, NULL);
        if (s->unconsumed) nghttp2_session_consume(c->ss, s->id, s->unconsumed);
        schedule_flush(c);
    }
    s->unconsumed = 0;
    if (s->prev) s->prev->next = s->next; else c->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->next = s->prev = NULL;
    s->c = NULL;
}

/* Ends the stream from this side (deadline, close): RST_STREAM if it still runs, then detach. */
static void stream_abort(struct stream *s, int kind, char *msg) {
    struct conn *c = s->c;
    if (c && c->ss && s->open && s->id > 0) {
        nghttp2_submit_rst_stream(c->ss, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        schedule_flush(c);
    }
    stream_end(s, kind, NGHTTP2_CANCEL, msg);
    stream_detach(s);
}

static void on_stream_timeout(void *ud) {
    struct stream *s = ud;
    s->timer_on = 0;
    stream_abort(s, F_TIMEOUT, format("no response within the timeout of %gs", s->timeout));
}

static struct stream *find_stream(struct conn *c, int32_t id) {
    for (struct stream *s = c->streams; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

/* ---- the connection's end ---- */

static void conn_teardown(struct conn *c) {
    if (c->ctimer_on) rb_timer_stop(c->ctimer);
    if (c->ftimer_on) rb_timer_stop(c->ftimer);
    c->ctimer_on = c->ftimer_on = 0;
    if (c->job) { c->job->c = NULL; c->job = NULL; }
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
    if (c->fd >= 0) {
        rb_fd_callback(c->fd, 0, NULL, NULL);
        rb_forget_fd(c->fd);
        close(c->fd);
        c->fd = -1;
    }
    c->armed = 0;
    if (c->ss) { nghttp2_session_del(c->ss); c->ss = NULL; }
    if (c->addrs) { freeaddrinfo(c->addrs); c->addrs = c->next_addr = NULL; }
    buf_free(&c->out);
}

/* Closes the connection; streams still running end with kind and the message (msg is taken). */
static void conn_fail(struct conn *c, int kind, char *msg) {
    if (c->state == C_CLOSED) { free(msg); return; }
    c->state = C_CLOSED;
    c->fail = kind;
    set_str(&c->error, msg ? msg : strdup("out of memory"));
    /* connection-wide failure: the sessions's streams are gone with it, nothing to consume */
    if (c->ss) { nghttp2_session_del(c->ss); c->ss = NULL; }
    while (c->streams) {
        struct stream *s = c->streams;
        s->open = 0;
        stream_end(s, kind, 0, c->error ? strdup(c->error) : NULL);
        stream_detach(s);
    }
    conn_teardown(c);
}

static void conn_failf(struct conn *c, int kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    conn_fail(c, kind, msg);
}

/* ---- nghttp2 callbacks (they never call Lua, and never close the connection) ---- */

static int on_begin_headers(nghttp2_session *ss, const nghttp2_frame *f, void *ud) {
    struct stream *s = nghttp2_session_get_stream_user_data(ss, f->hd.stream_id);
    if (!s || f->hd.type != NGHTTP2_HEADERS) return 0;
    if (!s->head_done) {        /* a new response header block (after a 1xx one, again) */
        s->head.off = s->head.len = 0;
        s->nhead = 0;
        s->status = 0;
    }
    return 0;
}

static int on_header(nghttp2_session *ss, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
    struct stream *s = nghttp2_session_get_stream_user_data(ss, f->hd.stream_id);
    if (!s || f->hd.type != NGHTTP2_HEADERS) return 0;
    int rc = 0;
    if (s->head_done) rc = hlist_add(&s->trail, &s->ntrail, name, nlen, value, vlen);
    else if (nlen == 7 && !memcmp(name, ":status", 7)) {
        int st = 0;
        for (size_t i = 0; i < vlen && i < 3; i++) st = st * 10 + (value[i] - '0');
        s->status = st;
    } else if (nlen && name[0] != ':') rc = hlist_add(&s->head, &s->nhead, name, nlen, value, vlen);
    if (rc) {   /* over HEADER_LIMIT: nghttp2 resets the stream */
        set_str(&s->msg, strdup("the response headers are over 1 MiB"));
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static void remote_end(struct stream *s) {
    s->remote_ended = 1;
    stop_stream_timer(s);
    rb_notify(s->rid);
}

static int on_frame_recv(nghttp2_session *ss, const nghttp2_frame *f, void *ud) {
    struct conn *c = ud;
    struct stream *s = f->hd.stream_id ? nghttp2_session_get_stream_user_data(ss, f->hd.stream_id) : NULL;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (!s) break;
        if (!s->head_done) {
            if (s->status >= 200) {
                s->head_done = 1;
                rb_notify(s->rid);
            }
        }
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) remote_end(s);
        break;
    case NGHTTP2_DATA:
        if (s && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) remote_end(s);
        break;
    case NGHTTP2_RST_STREAM:
        if (s) { s->peer_rst = 1; s->rst_code = f->rst_stream.error_code; }
        break;
    case NGHTTP2_GOAWAY: {
        c->goaway = 1;
        c->goaway_last = f->goaway.last_stream_id;
        c->goaway_code = f->goaway.error_code;
        size_t n = f->goaway.opaque_data_len < 200 ? f->goaway.opaque_data_len : 200;
        char *t = malloc(n + 1);
        if (t) {
            for (size_t i = 0; i < n; i++) {
                char ch = (char)f->goaway.opaque_data[i];
                t[i] = ch >= 32 && ch < 127 ? ch : '?';
            }
            t[n] = 0;
        }
        set_str(&c->goaway_text, t);
        break;
    }
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) c->settings_seen = 1;
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ss, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    struct stream *s = nghttp2_session_get_stream_user_data(ss, id);
    if (!s || s->done) {        /* nobody will read it: give the window back at once */
        nghttp2_session_consume(ss, id, len);
        return 0;
    }
    size_t had = buf_avail(&s->body);
    if (!had) buf_reserve(&s->body, s->last_read > len ? s->last_read : len);
    if (buf_add(&s->body, data, len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->unconsumed += len;
    s->received += len;
    if (had + len > s->body_peak) s->body_peak = had + len;
    if (!had) rb_notify(s->rid);
    return 0;
}

static char *goaway_words(struct conn *c) {
    const char *text = c->goaway_text && *c->goaway_text ? c->goaway_text : NULL;
    return format("GOAWAY %s%s%s%s", nghttp2_http2_strerror(c->goaway_code), text ? ": \"" : "",
                  text ? text : "", text ? "\"" : "");
}

static int on_stream_close(nghttp2_session *ss, int32_t id, uint32_t code, void *ud) {
    struct conn *c = ud;
    struct stream *s = nghttp2_session_get_stream_user_data(ss, id);
    if (!s) return 0;
    s->open = 0;
    if (s->remote_ended) { stream_end(s, F_NONE, code, NULL); return 0; }
    if (s->peer_rst && s->rst_code == NGHTTP2_REFUSED_STREAM && !s->head_done)
        stream_end(s, F_REFUSED, code, strdup("the server refused the stream (RST_STREAM REFUSED_STREAM) "
                                             "without processing it"));
    else if (s->peer_rst)
        stream_end(s, F_RESET, s->rst_code, format("the server reset the stream (RST_STREAM %s)",
                                                   nghttp2_http2_strerror(s->rst_code)));
    else if (c->goaway && id > c->goaway_last) {
        char *g = goaway_words(c);
        stream_end(s, F_REFUSED, code, format("the server is going away (%s) and did not process the "
                                             "stream", g ? g : "GOAWAY"));
        free(g);
    } else {
        char *why = s->msg ? strdup(s->msg) : NULL;
        stream_end(s, F_PROTOCOL, code, format("HTTP/2 stream error %s%s%s", nghttp2_http2_strerror(code),
                                               why ? ": " : "", why ? why : ""));
        free(why);
    }
    return 0;
}

/* Remembers where our HEADERS went in the byte stream, to know later whether they were sent.
 * nghttp2_session_mem_send calls this before it returns the frame's bytes. */
static int on_frame_send(nghttp2_session *ss, const nghttp2_frame *f, void *ud) {
    struct conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    struct stream *s = nghttp2_session_get_stream_user_data(ss, f->hd.stream_id);
    if (s && !s->headers_at) s->headers_at = c->appended + 1;   /* this frame's first byte */
    return 0;
}

static int on_frame_not_send(nghttp2_session *ss, const nghttp2_frame *f, int err, void *ud) {
    struct conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS) return 0;
    struct stream *s = find_stream(c, f->hd.stream_id);   /* never opened: no user data lookup */
    if (!s || s->done) return 0;
    s->open = 0;
    char *g = c->goaway ? goaway_words(c) : NULL;
    stream_end(s, F_REFUSED, 0, format("the stream could not be started (%s%s%s)", nghttp2_strerror(err),
                                       g ? ", " : "", g ? g : ""));
    free(g);
    return 0;
}

/* The request body for nghttp2: from the Lua string, or what Lua wrote so far. */
static ssize_t on_read_body(nghttp2_session *ss, int32_t id, uint8_t *dst, size_t room,
                            uint32_t *flags, nghttp2_data_source *src, void *ud) {
    struct stream *s = nghttp2_session_get_stream_user_data(ss, id);
    if (!s || s->done) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n;
    if (s->body_str) {
        n = s->body_len - s->body_off;
        if (n > room) n = room;
        memcpy(dst, s->body_str + s->body_off, n);
        s->body_off += n;
        if (s->body_off == s->body_len) *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else {
        size_t avail = buf_avail(&s->up);
        if (!avail && !s->up_done) {
            s->deferred = 1;
            return NGHTTP2_ERR_DEFERRED;
        }
        n = avail < room ? avail : room;
        memcpy(dst, s->up.p + s->up.off, n);
        s->up.off += n;
        if (s->up_done && !buf_avail(&s->up)) *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->up_full && buf_avail(&s->up) < s->up_limit) {
            s->up_full = 0;
            rb_notify(s->sid);
        }
    }
    s->sent += n;
    return (ssize_t)n;
}

static int make_callbacks(void) {
    if (callbacks) return 0;
    if (nghttp2_session_callbacks_new(&callbacks)) return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks, on_frame_not_send);
    return 0;
}

/* ---- socket I/O (plain or TLS) ---- */

enum { IO_AGAIN = -1, IO_ERROR = -2 };

static char *tls_error_text(void) {
    unsigned long e = ERR_get_error();
    if (!e) return NULL;
    char b[256];
    ERR_error_string_n(e, b, sizeof b);
    return strdup(b);
}

/* > 0 bytes, 0 at the end of the stream, IO_AGAIN, or IO_ERROR with *why set. */
static ssize_t io_read(struct conn *c, char *dst, size_t n, char **why) {
    if (!c->ssl) {
        ssize_t r;
        do r = recv(c->fd, dst, n, 0); while (r < 0 && errno == EINTR);
        if (r >= 0) return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
        *why = format("read: %s", strerror(errno));
        return IO_ERROR;
    }
    ERR_clear_error();
    int r = SSL_read(c->ssl, dst, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) { c->read_wants_write = 0; return r; }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return IO_AGAIN;
    if (e == SSL_ERROR_WANT_WRITE) { c->read_wants_write = 1; return IO_AGAIN; }
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e == SSL_ERROR_SYSCALL && errno) *why = format("read: %s", strerror(errno));
    else {
        char *t = tls_error_text();
        *why = t ? format("TLS: %s", t) : strdup("TLS read failed");
        free(t);
    }
    return IO_ERROR;
}

static ssize_t io_write(struct conn *c, const char *src, size_t n, char **why) {
    if (!c->ssl) {
        ssize_t r;
        do r = send(c->fd, src, n, MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
        if (r >= 0) return r;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return IO_AGAIN;
        *why = format("write: %s", strerror(errno));
        return IO_ERROR;
    }
    ERR_clear_error();
    int r = SSL_write(c->ssl, src, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return IO_AGAIN;
    if (e == SSL_ERROR_SYSCALL && errno) *why = format("write: %s", strerror(errno));
    else {
        char *t = tls_error_text();
        *why = t ? format("TLS: %s", t) : strdup("TLS write failed");
        free(t);
    }
    return IO_ERROR;
}

/* ---- driving the session ---- */

static void on_io(int fd, uint32_t events, void *ud);

static void arm(struct conn *c, uint32_t events) {
    if (c->fd < 0 || events == c->armed) return;
    rb_fd_callback(c->fd, events, on_io, c);
    c->armed = events;
}

static void rearm(struct conn *c) {
    if (c->state == C_CONNECTING) arm(c, EPOLLOUT);
    else if (c->state == C_HANDSHAKE) arm(c, (uint32_t)c->hs_want);
    else if (c->state == C_READY) arm(c, EPOLLIN | (c->want_out || c->read_wants_write ? EPOLLOUT : 0));
}

/* Writes what nghttp2 has to send until done or the socket is full. -1 when the connection failed. */
static int conn_flush(struct conn *c) {
    if (c->state != C_READY) return 0;
    for (;;) {
        if (!buf_avail(&c->out)) {
            c->out.off = c->out.len = 0;
            while (c->out.len < OUT_BATCH) {
                const uint8_t *data;
                ssize_t n = nghttp2_session_mem_send(c->ss, &data);
                if (n < 0) {
                    conn_failf(c, F_PROTOCOL, "HTTP/2 error: %s", nghttp2_strerror((int)n));
                    return -1;
                }
                if (n == 0) break;
                if (buf_add(&c->out, data, (size_t)n)) { conn_fail(c, F_LOST, NULL); return -1; }
                c->appended += (uint64_t)n;
            }
            if (!buf_avail(&c->out)) break;
        }
        char *why = NULL;
        size_t avail = buf_avail(&c->out);
        ssize_t w = io_write(c, c->out.p + c->out.off, avail, &why);
        if (w == IO_AGAIN) { c->want_out = 1; rearm(c); return 0; }
        if (w < 0) {
            conn_fail(c, F_LOST, format("the connection to %s failed: %s", c->where, why));
            free(why);
            return -1;
        }
        c->out.off += (size_t)w;
        c->written += (uint64_t)w;
    }
    c->want_out = 0;
    rearm(c);
    return 0;
}

/* After I/O: closes a connection that is finished (the session wants nothing more, or the server
 * said GOAWAY and the last stream has ended). */
static void conn_check(struct conn *c) {
    if (c->state != C_READY) return;
    int idle_goaway = c->goaway && c->active == 0;
    if (idle_goaway || (!nghttp2_session_want_read(c->ss) && !nghttp2_session_want_write(c->ss)
                        && !buf_avail(&c->out))) {
        char *g = c->goaway ? goaway_words(c) : NULL;
        conn_fail(c, c->goaway ? F_GOAWAY : F_PROTOCOL,
                  format("the HTTP/2 connection to %s has ended%s%s%s", c->where, g ? " (" : "", g ? g : "",
                         g ? ")" : ""));
        free(g);
    }
}

static void on_flush_timer(void *ud) {
    struct conn *c = ud;
    c->ftimer_on = 0;
    if (conn_flush(c) == 0) conn_check(c);
}

/* Lua-side changes (a new stream, consumed bytes, more body) are sent once per loop turn, so many
 * of them share one write. */
static void schedule_flush(struct conn *c) {
    if (c->ftimer_on || c->state != C_READY) return;
    c->ftimer = rb_timer_start(0, rb_new_id(), on_flush_timer, c);
    c->ftimer_on = 1;
}

static void conn_read(struct conn *c) {
    static char chunk[65536];   /* one thread: shared */
    for (;;) {
        char *why = NULL;
        ssize_t n = io_read(c, chunk, sizeof chunk, &why);
        if (n == IO_AGAIN) return;
        if (n == 0) {
            char *g = c->goaway ? goaway_words(c) : NULL;
            conn_fail(c, c->goaway ? F_GOAWAY : F_LOST,
                      format("the server closed the connection (%s)%s%s", c->where, g ? " after " : "", g ? g : ""));
            free(g);
            return;
        }
        if (n < 0) {
            conn_fail(c, F_LOST, format("the connection to %s was lost: %s", c->where, why));
            free(why);
            return;
        }
        ssize_t r = nghttp2_session_mem_recv(c->ss, (const uint8_t *)chunk, (size_t)n);
        if (r < 0) {
            conn_flush(c);  /* best effort: the GOAWAY nghttp2 queued tells the server why */
            conn_failf(c, F_PROTOCOL, "HTTP/2 protocol error on the connection to %s: %s", c->where,
                       nghttp2_strerror((int)r));
            return;
        }
    }
}

/* ---- connecting ---- */

static void connect_next(struct conn *c);
static void start_tls(struct conn *c);

static void conn_read(struct conn *c);

static void became_ready(struct conn *c) {
    c->state = C_READY;
    if (c->ctimer_on) rb_timer_stop(c->ctimer);
    c->ctimer_on = 0;
    if (c->ssl) {       /* records that came with the handshake may wait in OpenSSL's buffer */
        conn_read(c);
        if (c->state != C_READY) return;
    }
    if (conn_flush(c) == 0) conn_check(c);
}

static void connected(struct conn *c) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getsockname(c->fd, (struct sockaddr *)&sa, &len) == 0) {
        if (sa.ss_family == AF_INET) c->local_port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
        else if (sa.ss_family == AF_INET6) c->local_port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    }
    if (c->tls) start_tls(c);
    else became_ready(c);
}

static void drop_fd(struct conn *c) {
    rb_fd_callback(c->fd, 0, NULL, NULL);
    rb_forget_fd(c->fd);
    close(c->fd);
    c->fd = -1;
    c->armed = 0;
}

/* One connect attempt: 0 connected, 1 in progress, -1 failed (c->last_err set). */
static int try_connect(struct conn *c, int family, int type, int proto, const struct sockaddr *a,
                       socklen_t alen) {
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
    if (fd < 0) { set_str(&c->last_err, strdup(strerror(errno))); return -1; }
    if (family == AF_INET || family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int rc;
    do rc = connect(fd, a, alen); while (rc < 0 && errno == EINTR);
    if (rc == 0 || errno == EINPROGRESS) {
        c->fd = fd;
        return rc == 0 ? 0 : 1;
    }
    set_str(&c->last_err, strdup(strerror(errno)));
    close(fd);
    return -1;
}

static void connect_next(struct conn *c) {
    while (c->next_addr) {
        struct addrinfo *a = c->next_addr;
        c->next_addr = a->ai_next;
        int rc = try_connect(c, a->ai_family, a->ai_socktype, a->ai_protocol, a->ai_addr, a->ai_addrlen);
        if (rc == 0) { connected(c); return; }
        if (rc == 1) { c->state = C_CONNECTING; rearm(c); return; }
    }
    conn_failf(c, F_CONNECT, "Couldn't connect to server %s: %s", c->where,
               c->last_err ? c->last_err : "no address");
}

static void connect_unix(struct conn *c) {
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    size_t n = strlen(c->unix_path);
    if (n == 0 || n >= sizeof un.sun_path) {
        conn_failf(c, F_CONNECT, "Couldn't connect to server %s: the socket path is not 1..%d bytes long",
                   c->where, (int)sizeof un.sun_path - 1);
        return;
    }
    memcpy(un.sun_path, c->unix_path, n);
    int rc = try_connect(c, AF_UNIX, SOCK_STREAM, 0, (struct sockaddr *)&un, sizeof un);
    if (rc == 0) connected(c);
    else if (rc == 1) { c->state = C_CONNECTING; rearm(c); }
    else conn_failf(c, F_CONNECT, "Couldn't connect to server %s: %s", c->where, c->last_err);
}

static void connect_finished(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (!err) { connected(c); return; }
    set_str(&c->last_err, strdup(strerror(err)));
    drop_fd(c);
    if (c->unix_path) conn_failf(c, F_CONNECT, "Couldn't connect to server %s: %s", c->where, c->last_err);
    else connect_next(c);
}

/* Host names are resolved in a thread (getaddrinfo blocks), which reports through a pipe. */
static void *resolve_main(void *p) {
    struct resolve_job *j = p;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    j->rc = getaddrinfo(j->host, j->port, &hints, &j->res);
    j->err = errno;
    __atomic_store_n(&j->finished, 1, __ATOMIC_RELEASE);
    char b = 1;
    if (write(j->fds[1], &b, 1) < 0) { /* the pipe is ours and empty: cannot fail */ }
    return NULL;
}

static void job_free(struct resolve_job *j) {
    if (j->res) freeaddrinfo(j->res);
    free(j->host);
    free(j);
}

static void on_resolved(int fd, uint32_t events, void *ud) {
    struct resolve_job *j = ud;
    if (!__atomic_load_n(&j->finished, __ATOMIC_ACQUIRE)) return;
    rb_fd_callback(fd, 0, NULL, NULL);
    rb_forget_fd(fd);
    close(j->fds[0]);
    close(j->fds[1]);
    struct conn *c = j->c;
    if (!c) { job_free(j); return; }
    c->job = NULL;
    if (j->rc) {
        const char *why = j->rc == EAI_SYSTEM ? strerror(j->err) : gai_strerror(j->rc);
        conn_failf(c, F_CONNECT, "Couldn't resolve host name '%s': %s", c->host, why);
    } else {
        c->addrs = c->next_addr = j->res;
        j->res = NULL;
        connect_next(c);
    }
    job_free(j);
}

static void start_resolve(struct conn *c) {
    char port[8];
    snprintf(port, sizeof port, "%d", c->port);
    /* a numeric address needs no lookup */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    if (getaddrinfo(c->host, port, &hints, &c->addrs) == 0) {
        c->next_addr = c->addrs;
        connect_next(c);
        return;
    }
    c->addrs = NULL;
    struct resolve_job *j = calloc(1, sizeof *j);
    if (!j || !(j->host = strdup(c->host)) || pipe2(j->fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        if (j) { free(j->host); free(j); }
        conn_failf(c, F_CONNECT, "Couldn't resolve host name '%s': %s", c->host, strerror(errno));
        return;
    }
    memcpy(j->port, port, sizeof port);
    j->c = c;
    /* the thread must not take the loop's signals: block them all while it is created */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    int rc = pthread_create(&th, &attr, resolve_main, j);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        close(j->fds[0]); close(j->fds[1]);
        job_free(j);
        conn_failf(c, F_CONNECT, "Couldn't resolve host name '%s': %s", c->host, strerror(rc));
        return;
    }
    c->job = j;
    rb_fd_callback(j->fds[0], EPOLLIN, on_resolved, j);
}

static void on_connect_timeout(void *ud) {
    struct conn *c = ud;
    c->ctimer_on = 0;
    if (c->state < C_READY)
        conn_failf(c, F_CONNECT, "Couldn't connect to server %s: no connection within the connect timeout of %gs%s",
                   c->where, c->connect_timeout, c->state == C_HANDSHAKE ? " (the TLS handshake did not finish)" : "");
}

/* ---- TLS ---- */

struct tls_ctx { char *ca_file; int insecure; SSL_CTX *ctx; struct tls_ctx *next; };
static struct tls_ctx *tls_ctxs;

static SSL_CTX *tls_context(struct conn *c, char **why) {
    for (struct tls_ctx *t = tls_ctxs; t; t = t->next)
        if (t->insecure == c->insecure && ((!t->ca_file && !c->ca_file) ||
                                           (t->ca_file && c->ca_file && !strcmp(t->ca_file, c->ca_file))))
            return t->ctx;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { *why = strdup("cannot create a TLS context"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);   /* HTTP/2 framing detects truncation */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    static const unsigned char alpn[] = "\x02h2";
    if (SSL_CTX_set_alpn_protos(ctx, alpn, 3) != 0) {
        SSL_CTX_free(ctx);
        *why = strdup("cannot set TLS ALPN");
        return NULL;
    }
    SSL_CTX_set_verify(ctx, c->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    if (c->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL) != 1) {
            char *t = tls_error_text();
            *why = format("cannot load the certificate authorities of ca_file '%s' (%s): give a PEM file",
                          c->ca_file, t ? t : "unreadable");
            free(t);
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        SSL_CTX_free(ctx);
        *why = strdup("cannot load the system's certificate authorities (install ca-certificates)");
        return NULL;
    }
    struct tls_ctx *t = calloc(1, sizeof *t);
    if (!t || (c->ca_file && !(t->ca_file = strdup(c->ca_file)))) {
        free(t);
        SSL_CTX_free(ctx);
        *why = strdup("out of memory");
        return NULL;
    }
    t->insecure = c->insecure;
    t->ctx = ctx;
    t->next = tls_ctxs;
    tls_ctxs = t;
    return ctx;
}

static int is_ip(const char *h) {
    unsigned char b[16];
    return inet_pton(AF_INET, h, b) == 1 || inet_pton(AF_INET6, h, b) == 1;
}

static void handshake(struct conn *c) {
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        const unsigned char *p = NULL;
        unsigned int n = 0;
        SSL_get0_alpn_selected(c->ssl, &p, &n);
        if (n != 2 || memcmp(p, "h2", 2)) {
            conn_failf(c, F_TLS, "the server %s does not speak HTTP/2 over TLS (ALPN: %.*s)", c->where,
                       n ? (int)n : 4, n ? (const char *)p : "none");
            return;
        }
        became_ready(c);
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->hs_want = e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
        rearm(c);
        return;
    }
    long v = SSL_get_verify_result(c->ssl);
    char *t = tls_error_text();
    if (v != X509_V_OK)
        conn_failf(c, F_TLS, "TLS handshake with %s failed: the server certificate is not trusted: %s "
                   "(give ca_file, or insecure for tests)", c->where, X509_verify_cert_error_string(v));
    else if (t) conn_failf(c, F_TLS, "TLS handshake with %s failed: %s", c->where, t);
    else if (e == SSL_ERROR_SYSCALL && errno)
        conn_failf(c, F_TLS, "TLS handshake with %s failed: %s", c->where, strerror(errno));
    else conn_failf(c, F_TLS, "TLS handshake with %s failed: the server closed the connection", c->where);
    free(t);
}

static void start_tls(struct conn *c) {
    char *why = NULL;
    SSL_CTX *ctx = tls_context(c, &why);
    if (!ctx) { conn_fail(c, F_TLS, why); return; }
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) { conn_failf(c, F_TLS, "cannot start TLS with %s", c->where); return; }
    SSL_set_connect_state(c->ssl);
    int ip = is_ip(c->host);
    if (!ip) SSL_set_tlsext_host_name(c->ssl, c->host);    /* SNI */
    if (!c->insecure) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->host)
                    : SSL_set1_host(c->ssl, c->host);
        if (ok != 1) { conn_failf(c, F_TLS, "cannot verify the name of %s", c->where); return; }
    }
    c->state = C_HANDSHAKE;
    handshake(c);
}

static void on_io(int fd, uint32_t events, void *ud) {
    struct conn *c = ud;
    switch (c->state) {
    case C_CONNECTING:
        connect_finished(c);
        return;
    case C_HANDSHAKE:
        handshake(c);
        return;
    case C_READY:
        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR) || c->read_wants_write) {
            conn_read(c);
            if (c->state != C_READY) return;
        }
        if (conn_flush(c) == 0) conn_check(c);
        return;
    default:
        return;
    }
}

/* ---- Lua API: connections ---- */

static struct conn *check_conn(lua_State *L, int i) { return luaL_checkudata(L, i, CONN_MT); }
static struct stream *check_stream(lua_State *L) { return luaL_checkudata(L, 1, STREAM_MT); }

static int opt_field(lua_State *L, int t, const char *name, int type) {
    return rbx_opt_field(L, t, name, type, "h2 option");
}

static char *opt_strdup(lua_State *L, int t, const char *name) {
    if (!opt_field(L, t, name, LUA_TSTRING)) return NULL;
    char *s = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!s) luaL_error(L, "out of memory");
    return s;
}

static double opt_number(lua_State *L, int t, const char *name, double dflt) {
    if (!opt_field(L, t, name, LUA_TNUMBER)) return dflt;
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(v > 0)) luaL_error(L, "h2 option '%s' must be positive", name);
    return v;
}

static int opt_bool(lua_State *L, int t, const char *name) { return rbx_opt_bool(L, t, name, "h2 option"); }

static int32_t opt_window(lua_State *L, int t, const char *name, int32_t dflt) {
    double v = opt_number(L, t, name, dflt);
    if (v < 65535 || v > NGHTTP2_MAX_WINDOW_SIZE)
        luaL_error(L, "h2 option '%s' must be 65535..%d bytes", name, NGHTTP2_MAX_WINDOW_SIZE);
    return (int32_t)v;
}

static void conn_free_strings(struct conn *c) {
    free(c->host); free(c->unix_path); free(c->ca_file); free(c->where); free(c->last_err);
    free(c->goaway_text); free(c->error);
    c->host = c->unix_path = c->ca_file = c->where = c->last_err = c->goaway_text = c->error = NULL;
}

static int start_session(struct conn *c) {
    nghttp2_option *opt;
    if (make_callbacks() || nghttp2_option_new(&opt)) return -1;
    nghttp2_option_set_no_auto_window_update(opt, 1);   /* we reopen windows as Lua reads */
    int rc = nghttp2_session_client_new2(&c->ss, callbacks, c, opt);
    nghttp2_option_del(opt);
    if (rc) return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)c->stream_window},
    };
    if (nghttp2_submit_settings(c->ss, NGHTTP2_FLAG_NONE, iv, 2)) return -1;
    if (nghttp2_session_set_local_window_size(c->ss, NGHTTP2_FLAG_NONE, 0, c->conn_window)) return -1;
    return 0;
}

/* connect{host=, port=, unix=, tls=, ca_file=, insecure=, connect_timeout=, window=, conn_window=}
 * -> connection. Connecting starts at once; requests may be made before it finished. */
static int l_connect(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    struct conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->state = C_CLOSED;        /* until set up: __gc of a half-made one must find nothing to do */
    luaL_setmetatable(L, CONN_MT);
    c->unix_path = opt_strdup(L, 1, "unix");
    c->host = opt_strdup(L, 1, "host");
    c->ca_file = opt_strdup(L, 1, "ca_file");
    c->tls = opt_bool(L, 1, "tls");
    c->insecure = opt_bool(L, 1, "insecure");
    c->connect_timeout = opt_number(L, 1, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    c->stream_window = opt_window(L, 1, "window", STREAM_WINDOW);
    c->conn_window = opt_window(L, 1, "conn_window", CONN_WINDOW);
    if (opt_field(L, 1, "port", LUA_TNUMBER)) {
        lua_Integer p = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (p < 1 || p > 65535) return luaL_error(L, "h2 option 'port' must be 1..65535");
        c->port = (int)p;
    }
    if (!c->unix_path && (!c->host || !c->port)) return luaL_error(L, "h2.connect needs host and port, or unix");
    if (c->unix_path) c->where = format("unix:%s", c->unix_path);
    else c->where = format(strchr(c->host, ':') ? "[%s]:%d" : "%s:%d", c->host, c->port);
    if (!c->host) c->host = strdup("localhost");
    if (!c->where || !c->host) return luaL_error(L, "out of memory");
    if (start_session(c)) return luaL_error(L, "h2: cannot create an HTTP/2 session");
    c->state = C_RESOLVING;
    c->idle_since = rb_now();
    c->ctimer = rb_timer_start(c->connect_timeout, rb_new_id(), on_connect_timeout, c);
    c->ctimer_on = 1;
    if (c->unix_path) connect_unix(c);
    else start_resolve(c);
    return 1;
}

static uint32_t max_streams(struct conn *c) {
    return c->ss ? nghttp2_session_get_remote_settings(c->ss, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) : 0;
}

/* usage() -> state ("connecting", "ready", "goaway", "closed"), streams running, time (rb_now)
 * since when none runs, whether a new stream may go on it now: what a pool checks per request */
static int l_usage(lua_State *L) {
    struct conn *c = check_conn(L, 1);
    lua_pushstring(L, c->goaway && c->state != C_CLOSED ? "goaway" : STATE[c->state]);
    lua_pushinteger(L, c->active);
    lua_pushnumber(L, c->idle_since);
    lua_pushboolean(L, c->state != C_CLOSED && !c->goaway && (uint32_t)c->active < max_streams(c));
    return 4;
}

/* info() -> {state, active, total, max_streams, goaway, error, kind, idle_since, local_port, ...} */
static int l_info(lua_State *L) {
    struct conn *c = check_conn(L, 1);
    lua_createtable(L, 0, 12);
    lua_pushstring(L, c->goaway && c->state != C_CLOSED ? "goaway" : STATE[c->state]);
    lua_setfield(L, -2, "state");
    lua_pushinteger(L, c->active); lua_setfield(L, -2, "active");
    lua_pushinteger(L, (lua_Integer)c->total); lua_setfield(L, -2, "total");
    lua_pushinteger(L, max_streams(c)); lua_setfield(L, -2, "max_streams");
    lua_pushboolean(L, c->goaway); lua_setfield(L, -2, "goaway");
    lua_pushboolean(L, c->settings_seen); lua_setfield(L, -2, "settings_seen");
    lua_pushnumber(L, c->idle_since); lua_setfield(L, -2, "idle_since");
    lua_pushinteger(L, c->local_port); lua_setfield(L, -2, "local_port");
    lua_pushstring(L, c->where); lua_setfield(L, -2, "where");
    lua_pushinteger(L, (lua_Integer)c->written); lua_setfield(L, -2, "written");
    if (c->error) {
        lua_pushstring(L, c->error); lua_setfield(L, -2, "error");
        lua_pushstring(L, KIND[c->fail]); lua_setfield(L, -2, "kind");
    }
    return 1;
}

/* close(): ends the connection; streams still running fail with "cancelled". Safe to repeat. */
static int l_conn_close(lua_State *L) {
    struct conn *c = check_conn(L, 1);
    conn_failf(c, F_CANCELLED, "the connection to %s was closed", c->where ? c->where : "?");
    return 0;
}

static int l_conn_gc(lua_State *L) {
    struct conn *c = check_conn(L, 1);
    l_conn_close(L);
    conn_teardown(c);
    conn_free_strings(c);
    return 0;
}

/* ---- Lua API: streams ---- */

static void check_header_list(lua_State *L, int t, nghttp2_nv **nva, size_t *n) {
    lua_Integer len = luaL_len(L, t);
    if (len < 2 || len % 2) luaL_error(L, "h2 request: headers must be a flat list {name, value, ...}");
    *n = (size_t)len / 2;
    *nva = lua_newuserdatauv(L, *n * sizeof **nva, 0);   /* freed by the GC */
    for (size_t i = 0; i < *n; i++) {
        size_t nl, vl;
        lua_rawgeti(L, t, (lua_Integer)(2 * i + 1));
        lua_rawgeti(L, t, (lua_Integer)(2 * i + 2));
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "h2 request: header %d is not a name and a string value", (int)i + 1);
        const char *name = lua_tolstring(L, -2, &nl), *value = lua_tolstring(L, -1, &vl);
        if (!nl) luaL_error(L, "h2 request: header %d is not a name and a string value", (int)i + 1);
        for (size_t k = 0; k < nl; k++)
            if ((name[k] >= 'A' && name[k] <= 'Z') || name[k] <= ' ' || name[k] == 127)
                luaL_error(L, "h2 request: header name '%s' must be lowercase, without spaces", name);
        if (memchr(value, '\r', vl) || memchr(value, '\n', vl) || memchr(value, 0, vl))
            luaL_error(L, "h2 request: the value of header '%s' contains a line break or NUL", name);
        (*nva)[i] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nl, vl, NGHTTP2_NV_FLAG_NONE};
        lua_pop(L, 2);      /* the headers table keeps the strings alive */
    }
}

/* request(conn, headers, opts) -> stream. headers: flat {":method", "POST", ":path", "/x", ...}
 * (pseudo-headers first); opts: body (string) or body_stream (true), timeout, upload_limit. */
static int l_request(lua_State *L) {
    struct conn *c = check_conn(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_isnoneornil(L, 3)) { lua_settop(L, 2); lua_newtable(L); }
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    nghttp2_nv *nva;
    size_t nnv;
    check_header_list(L, 2, &nva, &nnv);                      /* at 4 */
    struct stream *s = lua_newuserdatauv(L, sizeof *s, 2);    /* at 5 */
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, STREAM_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 5, 1);     /* the connection lives as long as its streams */
    s->rid = rb_new_id();
    s->sid = rb_new_id();
    s->up_limit = UPLOAD_LIMIT;
    if (opt_field(L, 3, "body", LUA_TSTRING)) {
        s->has_body = 1;
        s->body_str = lua_tolstring(L, -1, &s->body_len);
        lua_setiuservalue(L, 5, 2);
    } else if (opt_bool(L, 3, "body_stream")) {
        s->has_body = s->streaming = 1;
        s->up_limit = (size_t)opt_number(L, 3, "upload_limit", UPLOAD_LIMIT);
    }
    if (opt_field(L, 3, "timeout", LUA_TNUMBER)) {
        s->timeout = lua_tonumber(L, -1);
        if (!(s->timeout > 0)) return luaL_error(L, "h2 option 'timeout' must be positive");
    }
    lua_settop(L, 5);
    if (c->state == C_CLOSED || c->goaway || !c->ss) {
        s->done = 1;
        s->fail = c->state == C_CLOSED ? (c->fail ? c->fail : F_LOST) : F_REFUSED;
        s->msg = c->state == C_CLOSED && c->error ? strdup(c->error)
                 : format("the connection to %s is going away (GOAWAY)", c->where);
        return 1;
    }
    nghttp2_data_provider prd = {.read_callback = on_read_body};
    int32_t id = nghttp2_submit_request(c->ss, NULL, nva, nnv, s->has_body ? &prd : NULL, s);
    if (id < 0) return luaL_error(L, "h2: cannot start the request: %s", nghttp2_strerror(id));
    s->id = id;
    s->open = 1;
    s->c = c;
    s->next = c->streams;
    if (c->streams) c->streams->prev = s;
    c->streams = s;
    c->active++;
    c->total++;
    if (s->timeout > 0) {
        s->timer = rb_timer_start(s->timeout, rb_new_id(), on_stream_timeout, s);
        s->timer_on = 1;
    }
    schedule_flush(c);
    return 1;
}

static int l_ids(lua_State *L) {
    struct stream *s = check_stream(L);
    lua_pushinteger(L, (lua_Integer)s->rid);
    lua_pushinteger(L, (lua_Integer)s->sid);
    return 2;
}

/* state() -> headers_complete, ended (the response is complete, or the stream failed) */
static int l_state(lua_State *L) {
    struct stream *s = check_stream(L);
    lua_pushboolean(L, s->head_done);
    lua_pushboolean(L, s->done || s->remote_ended);
    return 2;
}

/* head() -> status, {name, value, ...} once the response headers are complete */
static int l_head(lua_State *L) {
    struct stream *s = check_stream(L);
    if (!s->head_done) return 0;
    lua_pushinteger(L, s->status);
    push_hlist(L, &s->head, s->nhead);
    return 2;
}

static int l_trailers(lua_State *L) {
    struct stream *s = check_stream(L);
    push_hlist(L, &s->trail, s->ntrail);
    return 1;
}

/* read() -> all the buffered body bytes (few large reads keep the Lua side cheap); false when none
 * yet; nil at the end (or failure: result()) */
static int l_read(lua_State *L) {
    struct stream *s = check_stream(L);
    size_t n = buf_avail(&s->body);
    if (n) {
        lua_pushlstring(L, s->body.p + s->body.off, n);
        s->body.off = s->body.len = 0;
        s->last_read = n;
        if (s->body.cap > BODY_KEEP) buf_free(&s->body);   /* a drained stream holds little */
        size_t k = n < s->unconsumed ? n : s->unconsumed;
        if (k && s->c && s->c->ss) {    /* Lua took them: the peer may send as much again */
            nghttp2_session_consume(s->c->ss, s->id, k);
            schedule_flush(s->c);
        }
        s->unconsumed -= k;
        return 1;
    }
    if (s->remote_ended || s->done) {
        buf_free(&s->body);
        lua_pushnil(L);
    } else lua_pushboolean(L, 0);
    return 1;
}

/* write(s) -> true once buffered; false when the buffer is full (wait on sid, then retry);
 * nil, why when the body cannot take more. */
static int l_write(lua_State *L) {
    struct stream *s = check_stream(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *why = !s->streaming ? "the request was not made with body_stream"
                    : s->up_done ? "the request body was already finished"
                    : s->done ? "the stream has ended" : NULL;
    if (why) { lua_pushnil(L); lua_pushstring(L, why); return 2; }
    if (buf_avail(&s->up) >= s->up_limit) {
        s->up_full = 1;
        lua_pushboolean(L, 0);
        return 1;
    }
    if (buf_add(&s->up, data, len)) return luaL_error(L, "out of memory");
    if (s->deferred && len && s->c && s->c->ss) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->c->ss, s->id);
        schedule_flush(s->c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* finish(): the request body ends after what was written. */
static int l_finish(lua_State *L) {
    struct stream *s = check_stream(L);
    if (!s->streaming) return luaL_error(L, "h2: finish() on a request not made with body_stream");
    s->up_done = 1;
    if (s->deferred && s->c && s->c->ss) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->c->ss, s->id);
        schedule_flush(s->c);
    }
    return 0;
}

/* result() -> nil while running; true when the response is complete; else false, kind, message,
 * HTTP/2 error code, request_sent (whether the request reached the socket) */
static int l_result(lua_State *L) {
    struct stream *s = check_stream(L);
    if (s->remote_ended) { lua_pushboolean(L, 1); return 1; }
    if (!s->done) return 0;
    lua_pushboolean(L, 0);
    lua_pushstring(L, KIND[s->fail]);
    lua_pushstring(L, s->msg ? s->msg : "out of memory");
    lua_pushinteger(L, s->h2_code);
    lua_pushboolean(L, s->was_sent);
    return 5;
}

/* stats() -> {buffered, body_peak, received, sent, upload_buffered, id} */
static int l_stats(lua_State *L) {
    struct stream *s = check_stream(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)buf_avail(&s->body)); lua_setfield(L, -2, "buffered");
    lua_pushinteger(L, (lua_Integer)s->body_peak); lua_setfield(L, -2, "body_peak");
    lua_pushinteger(L, (lua_Integer)s->received); lua_setfield(L, -2, "received");
    lua_pushinteger(L, (lua_Integer)s->sent); lua_setfield(L, -2, "sent");
    lua_pushinteger(L, (lua_Integer)buf_avail(&s->up)); lua_setfield(L, -2, "upload_buffered");
    lua_pushinteger(L, s->id); lua_setfield(L, -2, "id");
    return 1;
}

/* close(): resets the stream if it still runs and frees its buffers; safe to repeat. */
static int l_stream_close(lua_State *L) {
    struct stream *s = check_stream(L);
    if (!s->done || s->open) stream_abort(s, F_CANCELLED, strdup("the stream was closed"));
    stream_detach(s);
    stop_stream_timer(s);
    buf_free(&s->body); buf_free(&s->up); buf_free(&s->head); buf_free(&s->trail);
    s->nhead = s->ntrail = 0;
    s->body_str = NULL;
    s->unconsumed = 0;
    return 0;
}

static int l_stream_gc(lua_State *L) {
    struct stream *s = check_stream(L);
    l_stream_close(L);
    free(s->msg);
    s->msg = NULL;
    return 0;
}

static int l_version(lua_State *L) {
    nghttp2_info *v = nghttp2_version(0);
    lua_pushfstring(L, "nghttp2/%s %s", v ? v->version_str : "?", OpenSSL_version(OPENSSL_VERSION));
    return 1;
}

/* Finalised after every connection (it is created first), at lua_close. */
static int l_shutdown(lua_State *L) {
    while (tls_ctxs) {
        struct tls_ctx *t = tls_ctxs;
        tls_ctxs = t->next;
        SSL_CTX_free(t->ctx);
        free(t->ca_file);
        free(t);
    }
    if (callbacks) nghttp2_session_callbacks_del(callbacks);
    callbacks = NULL;
    return 0;
}

int luaopen_runbox_c_h2(lua_State *L) {
    char err[1024];     /* the libraries are loaded here, not at start-up (lazy.h) */
    if (rb_lazy_nghttp2_load(err, sizeof err) != 0) return luaL_error(L, "%s", err);
    if (rb_lazy_ssl_load(err, sizeof err) != 0) return luaL_error(L, "%s", err);
    static const luaL_Reg conn_methods[] = {
        {"request", l_request}, {"usage", l_usage}, {"info", l_info}, {"close", l_conn_close},
        {NULL, NULL}};
    static const luaL_Reg stream_methods[] = {
        {"ids", l_ids}, {"state", l_state}, {"head", l_head}, {"trailers", l_trailers},
        {"read", l_read}, {"write", l_write}, {"finish", l_finish}, {"result", l_result},
        {"stats", l_stats}, {"close", l_stream_close}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"connect", l_connect}, {"version", l_version}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    /* a sentinel made before any connection, so its finaliser runs after theirs */
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_shutdown);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "_sentinel");
    if (luaL_newmetatable(L, CONN_MT)) {
        luaL_newlib(L, conn_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_conn_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, STREAM_MT)) {
        luaL_newlib(L, stream_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_stream_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_stream_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    return 1;
}
