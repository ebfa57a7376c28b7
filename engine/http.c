/* runbox.c.http: HTTP transfers on libcurl's multi interface, driven by the engine loop.
 *
 * One multi handle for the process (made on first use) with HTTP/2 multiplexing, so concurrent
 * requests to one host share a connection. curl tells us which sockets to watch and when to wake
 * (socket and timer callbacks) and we call curl_multi_socket_action from the loop; nothing here
 * blocks. Each transfer is a userdata holding an easy handle and the buffers between curl and Lua.
 * Its two ids are notified for the Lua side: `rid` when there is something new to read (headers
 * complete, body bytes, the end), `sid` when the request body can take more data (or the end).
 * The Lua wrapper (lua/runbox/http.lua) parks on those ids and turns this into requests. */
#include "lazy.h"
#include "loop.h"
#include "bytebuf.h"
#include "luax.h"

#include <curl/curl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <lauxlib.h>

#define XFER_MT "runbox.http.transfer"
#define DEFAULT_LIMIT (1u << 20)
#define WATCH_INTERVAL 0.025    /* seconds between stall checks of HTTP/2 streams */


struct xfer {
    CURL *easy;                 /* NULL once finished or closed */
    struct curl_slist *hdrs;
    rb_id rid, sid;
    char errbuf[CURL_ERROR_SIZE];
    /* response */
    struct buf head, trail, body;
    int head_done, recv_paused, follow;
    size_t body_limit, body_peak;
    unsigned long pauses;
    /* streamed request body */
    int has_body, streaming, up_done, up_full, send_paused;
    struct buf up;
    size_t up_limit;
    /* cleartext HTTP/2 (prior knowledge): see on_prereq */
    int h2c, reuse_only, new_conn, retry, restarts;
    /* completion */
    int done;
    CURLcode code;
    char *msg;
    long num_connects, local_port;
    double total_time;
    curl_off_t uploaded;
    /* the stall watchdog (see on_watch) */
    int added;                  /* in the multi handle and the list below */
    unsigned long progress, seen;
    struct xfer *next, *prev;   /* the list of transfers in the multi handle */
};

static CURLM *multi;
static struct xfer *all;
static rb_timer curl_timer, watch_timer;
static int timer_on, watch_on;
static int live;                /* transfers added to the multi handle */
static long connects;           /* new connections made by finished transfers */



/* ---- curl callbacks (they never touch the Lua state) ---- */

static int blank_line(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* Status code of a status line "HTTP/x[.y] NNN ...", 0 if none. */
static long status_of(const struct buf *b) {
    const char *p = b->p + b->off, *end = b->p + b->len;
    while (p < end && *p != ' ') p++;
    long code = 0;
    for (p++; p < end && *p >= '0' && *p <= '9'; p++) code = code * 10 + (*p - '0');
    return code;
}

/* With redirects followed, a 3xx response with a Location is not the final one. */
static int will_follow(const struct buf *b, long status) {
    if (status != 301 && status != 302 && status != 303 && status != 307 && status != 308) return 0;
    const char *p = b->p + b->off, *end = b->p + b->len;
    for (; p < end; p++)
        if (*p == '\n' && end - p > 9 && !strncasecmp(p + 1, "location:", 9)) return 1;
    return 0;
}

/* Header lines arrive one per call: a status line starts a block (1xx, redirects); the blank
 * line ends it; lines after the final block's end are trailers (HTTP/2, chunked HTTP/1.1). */
static size_t on_header(char *s, size_t size, size_t n, void *ud) {
    struct xfer *x = ud;
    size_t len = size * n;
    x->progress++;
    if (len >= 5 && !memcmp(s, "HTTP/", 5)) {
        x->head.off = x->head.len = 0;
        x->trail.off = x->trail.len = 0;
        x->head_done = 0;
        return buf_add(&x->head, s, len) ? 0 : len;
    }
    if (blank_line(s, len)) {
        long status = buf_avail(&x->head) ? status_of(&x->head) : 0;
        if (!x->head_done && status >= 200 && !(x->follow && will_follow(&x->head, status))) {
            x->head_done = 1;
            rb_notify(x->rid);
        }
        return len;
    }
    return buf_add(x->head_done ? &x->trail : &x->head, s, len) ? 0 : len;
}

/* Body bytes are buffered for Lua; past the limit the transfer pauses (curl keeps the chunk and
 * offers it again after Lua's next read unpauses it), so memory stays bounded. */
static size_t on_body(char *s, size_t size, size_t n, void *ud) {
    struct xfer *x = ud;
    size_t len = size * n, had = buf_avail(&x->body);
    x->progress++;
    if (had >= x->body_limit && len) {
        x->recv_paused = 1;
        x->pauses++;
        rb_notify(x->rid);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (buf_add(&x->body, s, len)) return 0;
    if (had + len > x->body_peak) x->body_peak = had + len;
    if (!had) rb_notify(x->rid);
    return len;
}

/* Streamed request body: hand curl what Lua wrote; pause when Lua has not written the next chunk. */
static size_t on_upload(char *dst, size_t size, size_t n, void *ud) {
    struct xfer *x = ud;
    size_t room = size * n, avail = buf_avail(&x->up);
    x->progress++;
    if (!avail) {
        if (x->up_done) return 0;
        x->send_paused = 1;
        rb_notify(x->sid);
        return CURL_READFUNC_PAUSE;
    }
    size_t k = avail < room ? avail : room;
    memcpy(dst, x->up.p + x->up.off, k);
    x->up.off += k;
    if (x->up_full && buf_avail(&x->up) < x->up_limit) {
        x->up_full = 0;
        rb_notify(x->sid);
    }
    return k;
}

/* New connections: close-on-exec sockets, so child processes never hold our connections. A
 * transfer that must reuse a connection (reuse_only, below) refuses to open one instead. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
    struct xfer *x = ud;
    if (x->reuse_only) {
        x->retry = 1;
        return CURL_SOCKET_BAD;
    }
    x->new_conn = 1;
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* libcurl 7.88 breaks a cleartext HTTP/2 connection when a prior-knowledge transfer reuses it (it
 * switches the connection to HTTP/2 a second time: "Error in the HTTP2 framing layer", curl issue
 * 10634, fixed in 8.0). So a prior-knowledge transfer that is about to reuse a connection is
 * stopped here, before it sends anything, and restarted as a plain HTTP/2 transfer that may only
 * reuse connections (reuse_only); if by then there is none to reuse, it is restarted with prior
 * knowledge again and opens one. See finish(). */
static int on_prereq(void *ud, char *pip, char *lip, int pport, int lport) {
    struct xfer *x = ud;
    if (x->h2c && !x->reuse_only && !x->new_conn) {
        x->retry = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    return CURL_PREREQFUNC_OK;
}

/* ---- the multi handle and the loop ---- */

static void finish(struct xfer *x, CURLcode code);

static void drain_messages(void) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        struct xfer *x = NULL;
        CURLcode code = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x) finish(x, code);
    }
}

static void on_fd(int fd, uint32_t events, void *ud) {
    int flags = 0, running;
    if (events & (EPOLLIN | EPOLLHUP)) flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (events & EPOLLERR) flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(multi, fd, flags, &running);
    drain_messages();
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *ud, void *sockp) {
    uint32_t ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev |= EPOLLOUT;
    rb_fd_callback(s, ev, on_fd, NULL);
    return 0;
}

static void on_timer(void *ud) {
    int running;
    timer_on = 0;           /* curl may set a new timer from inside the action */
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_messages();
}

static int on_timer_change(CURLM *m, long ms, void *ud) {
    if (timer_on) rb_timer_stop(curl_timer);
    timer_on = 0;
    if (ms >= 0) {
        /* a fresh id per timer, so stopping a stale handle can never stop someone else's timer */
        curl_timer = rb_timer_start(ms / 1000.0, rb_new_id(), on_timer, NULL);
        timer_on = 1;
    }
    return 0;
}

/* libcurl 7.88 driven through curl_multi_socket_action can strand an HTTP/2 stream: when one
 * transfer reads frames that belong to another stream sharing its connection, the other one is not
 * always woken, and once the socket has nothing more to read nothing wakes it: its response (or
 * its end) sits in curl's buffers. curl_easy_pause, when it changes the pause state, marks the
 * transfer to run at once with its connection readable, which makes it look at those buffers. So
 * every WATCH_INTERVAL, each HTTP/2 transfer that made no progress since the last check is nudged
 * that way, one at a time (the "readable" mark is per connection and the first transfer to run
 * takes it). A nudge of a transfer with nothing to do costs one pass through curl. */
static void pause_state(struct xfer *x, int flip) {
    int mask = (x->recv_paused ? CURLPAUSE_RECV : 0) | (x->send_paused ? CURLPAUSE_SEND : 0);
    curl_easy_pause(x->easy, mask ^ flip);
}

static void arm_watch(void);

static void on_watch(void *ud) {
    int running;
    watch_on = 0;
    if (!multi) return;
    if (live >= 1) {
        for (struct xfer *x = all; x; x = x->next) {
            long version = 0;
            int stalled = x->progress == x->seen && !x->recv_paused;
            x->seen = x->progress;
            if (!stalled) continue;
            curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &version);
            if (version != CURL_HTTP_VERSION_2_0) continue;
            pause_state(x, CURLPAUSE_SEND);
            pause_state(x, 0);
            curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
            x->seen = x->progress;
        }
        drain_messages();   /* only now: finishing transfers changes the list walked above */
    }
    arm_watch();
}

static void arm_watch(void) {
    if (watch_on || live < 1) return;
    watch_timer = rb_timer_start(WATCH_INTERVAL, rb_new_id(), on_watch, NULL);
    watch_on = 1;
}

/* Lazily, so runs that never use HTTP pay nothing for curl (TLS library start-up included). */
static int ensure_multi(void) {
    if (multi) return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    multi = curl_multi_init();
    if (!multi) { curl_global_cleanup(); return -1; }
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    return 0;
}

/* ---- transfer lifetime ---- */

static void release_easy(struct xfer *x) {
    if (x->added) {
        if (x->prev) x->prev->next = x->next; else all = x->next;
        if (x->next) x->next->prev = x->prev;
        x->next = x->prev = NULL;
        curl_multi_remove_handle(multi, x->easy);
        x->added = 0;
        live--;
    }
    if (x->easy) curl_easy_cleanup(x->easy);
    x->easy = NULL;
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
}

/* Runs the transfer again from the start with the other HTTP/2 mode (it has sent nothing). */
static int restart(struct xfer *x) {
    curl_multi_remove_handle(multi, x->easy);
    x->reuse_only = !x->reuse_only;
    x->retry = x->new_conn = 0;
    x->errbuf[0] = 0;
    x->restarts++;
    curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION,
                     x->reuse_only ? (long)CURL_HTTP_VERSION_2_0 : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    if (curl_multi_add_handle(multi, x->easy) == CURLM_OK) return 0;
    if (x->prev) x->prev->next = x->next; else all = x->next;   /* out of the multi handle */
    if (x->next) x->next->prev = x->prev;
    x->next = x->prev = NULL;
    x->added = 0;
    live--;
    return -1;
}

static void finish(struct xfer *x, CURLcode code) {
    if (x->retry && x->restarts < 8 && restart(x) == 0) return;
    x->done = 1;
    x->code = code;
    curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &x->num_connects);
    curl_easy_getinfo(x->easy, CURLINFO_LOCAL_PORT, &x->local_port);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &x->total_time);
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_UPLOAD_T, &x->uploaded);
    connects += x->num_connects;
    if (code != CURLE_OK) {
        const char *what = curl_easy_strerror(code);
        size_t a = strlen(what), b = strlen(x->errbuf);
        while (b && (x->errbuf[b - 1] == '\n' || x->errbuf[b - 1] == '\r')) x->errbuf[--b] = 0;
        x->msg = malloc(a + b + 3);
        if (x->msg) {
            memcpy(x->msg, what, a + 1);
            if (b) { memcpy(x->msg + a, ": ", 2); memcpy(x->msg + a + 2, x->errbuf, b + 1); }
        }
    }
    release_easy(x);
    rb_notify(x->rid);
    rb_notify(x->sid);
}

static void xfer_free(struct xfer *x) {
    release_easy(x);
    buf_free(&x->head); buf_free(&x->trail); buf_free(&x->body); buf_free(&x->up);
    free(x->msg);
    x->msg = NULL;
    if (!x->done) {
        x->done = 1;
        x->code = CURLE_ABORTED_BY_CALLBACK;
        rb_notify(x->rid);
        rb_notify(x->sid);
    }
}

/* Applies the pause state both directions should have now. */
static void repause(struct xfer *x) {
    if (!x->easy) return;
    curl_easy_pause(x->easy, (x->recv_paused ? CURLPAUSE_RECV : 0) | (x->send_paused ? CURLPAUSE_SEND : 0));
}

/* ---- options ---- */

static int opt_field(lua_State *L, int t, const char *name, int type) {
    return rbx_opt_field(L, t, name, type, "http option");
}

static const char *opt_string(lua_State *L, int t, const char *name) {
    if (!opt_field(L, t, name, LUA_TSTRING)) return NULL;
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1);      /* the options table keeps the string alive while we use it */
    return s;
}

static int opt_bool(lua_State *L, int t, const char *name) { return rbx_opt_bool(L, t, name, "http option"); }

static double opt_number(lua_State *L, int t, const char *name, double dflt) {
    if (!opt_field(L, t, name, LUA_TNUMBER)) return dflt;
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(v >= 0)) luaL_error(L, "http option '%s' must not be negative", name);
    return v;
}

static size_t opt_size(lua_State *L, int t, const char *name, size_t dflt) {
    double v = opt_number(L, t, name, (double)dflt);
    return v == 0 || v >= (double)SIZE_MAX ? SIZE_MAX : (size_t)v;
}

static long ms(double seconds) {
    double v = seconds * 1000.0;
    if (v > 0 && v < 1) v = 1;                  /* curl reads 0 as "no timeout" */
    return v > (double)LONG_MAX / 2 ? LONG_MAX / 2 : (long)v;
}

static void set_headers(lua_State *L, struct xfer *x, int t) {
    if (!opt_field(L, t, "headers", LUA_TTABLE)) return;
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_geti(L, -1, i) != LUA_TSTRING) luaL_error(L, "http option 'headers' must list strings");
        size_t len;
        const char *h = lua_tolstring(L, -1, &len);
        if (strlen(h) != len || strpbrk(h, "\r\n"))
            luaL_error(L, "http header '%s' contains a line break or NUL", h);
        struct curl_slist *l = curl_slist_append(x->hdrs, h);
        if (!l) luaL_error(L, "out of memory");
        x->hdrs = l;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->hdrs);
}

static void set_version(lua_State *L, struct xfer *x, const char *v) {
    long cv;
    if (!v) return;
    if (!strcmp(v, "1.1")) cv = CURL_HTTP_VERSION_1_1;
    else if (!strcmp(v, "1.0")) cv = CURL_HTTP_VERSION_1_0;
    else if (!strcmp(v, "2")) cv = CURL_HTTP_VERSION_2TLS;   /* ALPN over TLS, no h2c upgrade */
    else if (!strcmp(v, "2-prior-knowledge")) {
        cv = CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
        x->h2c = 1;
        curl_easy_setopt(x->easy, CURLOPT_PREREQFUNCTION, on_prereq);
        curl_easy_setopt(x->easy, CURLOPT_PREREQDATA, x);
    }
    else { luaL_error(L, "http option 'http_version' must be \"1.1\", \"2\" or \"2-prior-knowledge\", not \"%s\"", v); return; }
    curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION, cv);
}

/* The request body: a string (kept alive as the userdata's user value, so curl reads it in place)
 * or streamed by Lua through write/finish. */
static void set_body(lua_State *L, struct xfer *x, int t) {
    CURL *e = x->easy;
    if (opt_field(L, t, "body", LUA_TSTRING)) {
        x->has_body = 1;
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        lua_setiuservalue(L, 1, 1);     /* the transfer is at index 1 */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, s);
    } else if (opt_bool(L, t, "body_stream")) {
        x->streaming = x->has_body = 1;
        x->up_limit = opt_size(L, t, "upload_limit", DEFAULT_LIMIT);
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_upload);
        curl_easy_setopt(e, CURLOPT_READDATA, x);
        if (opt_field(L, t, "body_size", LUA_TNUMBER)) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)lua_tointeger(L, -1));
            lua_pop(L, 1);
        }
    }
}

static void set_method(struct xfer *x, const char *method) {
    CURL *e = x->easy;
    if (!strcmp(method, "HEAD")) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (!strcmp(method, "POST")) {
        if (!x->has_body) curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    } else if (strcmp(method, "GET") || x->has_body)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);   /* PUT, DELETE, ..., or a GET with a body */
}

static void configure(lua_State *L, struct xfer *x, int t) {
    CURL *e = x->easy;
    const char *url = opt_string(L, t, "url");
    if (!url) luaL_error(L, "http option 'url' is required");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 64L * 1024);
    x->body_limit = opt_size(L, t, "body_limit", DEFAULT_LIMIT);
    set_body(L, x, t);
    const char *method = opt_string(L, t, "method");
    set_method(x, method ? method : "GET");
    set_headers(L, x, t);
    set_version(L, x, opt_string(L, t, "http_version"));
    double v = opt_number(L, t, "timeout", 0);
    if (v > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms(v));
    v = opt_number(L, t, "connect_timeout", 0);
    if (v > 0) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms(v));
    const char *s = opt_string(L, t, "unix_socket");
    if (s) curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, s);
    if ((s = opt_string(L, t, "ca_file"))) curl_easy_setopt(e, CURLOPT_CAINFO, s);
    if (opt_bool(L, t, "insecure")) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if ((x->follow = opt_bool(L, t, "follow"))) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)opt_number(L, t, "max_redirects", 10));
    }
    if (opt_bool(L, t, "fresh_connect")) curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    if (opt_bool(L, t, "verbose")) curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);   /* curl's trace on stderr */
    /* wait for a connection being set up to learn whether it multiplexes, instead of opening one
     * connection per concurrent request */
    if (opt_bool(L, t, "pipewait")) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
}

/* ---- Lua API ---- */

static struct xfer *check_xfer(lua_State *L) { return luaL_checkudata(L, 1, XFER_MT); }

/* open(opts) -> transfer. Starts the request at once. */
static int l_open(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct xfer *x = lua_newuserdatauv(L, sizeof *x, 1);
    memset(x, 0, sizeof *x);
    luaL_setmetatable(L, XFER_MT);
    lua_insert(L, 1);                           /* transfer at 1, options at 2 */
    if (ensure_multi() < 0) return luaL_error(L, "http: cannot initialise libcurl");
    x->easy = curl_easy_init();
    if (!x->easy) return luaL_error(L, "http: cannot create a curl handle");
    x->rid = rb_new_id();
    x->sid = rb_new_id();
    configure(L, x, 2);
    CURLMcode mc = curl_multi_add_handle(multi, x->easy);
    if (mc != CURLM_OK) {
        release_easy(x);
        return luaL_error(L, "http: cannot start the transfer: %s", curl_multi_strerror(mc));
    }
    x->added = 1;
    live++;
    x->next = all;
    if (all) all->prev = x;
    all = x;
    arm_watch();
    lua_settop(L, 1);
    return 1;
}

static int l_ids(lua_State *L) {
    struct xfer *x = check_xfer(L);
    lua_pushinteger(L, (lua_Integer)x->rid);
    lua_pushinteger(L, (lua_Integer)x->sid);
    return 2;
}

/* state() -> headers_complete, done */
static int l_state(lua_State *L) {
    struct xfer *x = check_xfer(L);
    lua_pushboolean(L, x->head_done);
    lua_pushboolean(L, x->done);
    return 2;
}

static void push_buf(lua_State *L, const struct buf *b) {
    lua_pushlstring(L, b->p ? b->p + b->off : "", buf_avail(b));
}

/* head() -> the raw header block of the final response (status line first), or nil */
static int l_head(lua_State *L) {
    struct xfer *x = check_xfer(L);
    if (!x->head_done) return 0;
    push_buf(L, &x->head);
    return 1;
}

static int l_trailers(lua_State *L) {
    struct xfer *x = check_xfer(L);
    push_buf(L, &x->trail);
    return 1;
}

/* read() -> the buffered body bytes; false when none yet; nil at the end */
static int l_read(lua_State *L) {
    struct xfer *x = check_xfer(L);
    if (buf_avail(&x->body)) {
        push_buf(L, &x->body);
        x->body.off = x->body.len = 0;
        if (x->body.cap > 4 * (size_t)DEFAULT_LIMIT) buf_free(&x->body);
        if (x->recv_paused) {
            x->recv_paused = 0;
            repause(x);
        }
        return 1;
    }
    if (x->done) {
        buf_free(&x->body);
        lua_pushnil(L);
    } else lua_pushboolean(L, 0);
    return 1;
}

/* write(s) -> true once buffered; false when the buffer is full (wait on sid, then retry);
 * nil, why when the body cannot take more. */
static int l_write(lua_State *L) {
    struct xfer *x = check_xfer(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    const char *why = !x->streaming ? "the request was not opened with body_stream"
                    : x->up_done ? "the request body was already finished"
                    : x->done ? "the transfer has ended" : NULL;
    if (why) { lua_pushnil(L); lua_pushstring(L, why); return 2; }
    if (buf_avail(&x->up) >= x->up_limit) {
        x->up_full = 1;
        lua_pushboolean(L, 0);
        return 1;
    }
    if (buf_add(&x->up, s, len)) return luaL_error(L, "out of memory");
    if (x->send_paused && len) {
        x->send_paused = 0;
        repause(x);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* finish(): the request body ends after what was written. */
static int l_finish(lua_State *L) {
    struct xfer *x = check_xfer(L);
    if (!x->streaming) return luaL_error(L, "http: finish() on a request not opened with body_stream");
    x->up_done = 1;
    if (x->send_paused) {
        x->send_paused = 0;
        repause(x);
    }
    return 0;
}

/* result() -> nil while running; else curl's code (0: success) and its message */
static int l_result(lua_State *L) {
    struct xfer *x = check_xfer(L);
    if (!x->done) return 0;
    lua_pushinteger(L, x->code);
    if (x->code == CURLE_OK) return 1;
    lua_pushstring(L, x->msg ? x->msg : curl_easy_strerror(x->code));
    return 2;
}

/* stats() -> table: bytes buffered now, the most ever buffered, pauses, and (when done)
 * connections made, local port, total time, request body bytes sent */
static int l_stats(lua_State *L) {
    struct xfer *x = check_xfer(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)buf_avail(&x->body)); lua_setfield(L, -2, "buffered");
    lua_pushinteger(L, (lua_Integer)x->body_peak); lua_setfield(L, -2, "body_peak");
    lua_pushinteger(L, (lua_Integer)x->pauses); lua_setfield(L, -2, "pauses");
    lua_pushinteger(L, (lua_Integer)buf_avail(&x->up)); lua_setfield(L, -2, "upload_buffered");
    if (x->done) {
        lua_pushinteger(L, x->num_connects); lua_setfield(L, -2, "num_connects");
        lua_pushinteger(L, x->local_port); lua_setfield(L, -2, "local_port");
        lua_pushnumber(L, x->total_time); lua_setfield(L, -2, "total_time");
        lua_pushinteger(L, (lua_Integer)x->uploaded); lua_setfield(L, -2, "uploaded");
    }
    return 1;
}

/* close(): stops the transfer if it still runs and frees everything; safe to repeat. */
static int l_close(lua_State *L) {
    xfer_free(check_xfer(L));
    return 0;
}

/* live() -> transfers in progress; connects() -> connections opened so far (for tests) */
static int l_live(lua_State *L) { lua_pushinteger(L, live); return 1; }
static int l_connects(lua_State *L) { lua_pushinteger(L, connects); return 1; }

static int l_version(lua_State *L) { lua_pushstring(L, curl_version()); return 1; }

/* Finalised after every transfer (it is created first), at lua_close. */
static int l_shutdown(lua_State *L) {
    if (!multi) return 0;
    if (timer_on) rb_timer_stop(curl_timer);
    if (watch_on) rb_timer_stop(watch_timer);
    timer_on = watch_on = 0;
    curl_multi_cleanup(multi);
    multi = NULL;
    curl_global_cleanup();
    return 0;
}

int luaopen_runbox_c_http(lua_State *L) {
    char lazy_err[1024];    /* libcurl is loaded here, not at start-up (lazy.h) */
    if (rb_lazy_curl_load(lazy_err, sizeof lazy_err) != 0) return luaL_error(L, "%s", lazy_err);
    static const luaL_Reg methods[] = {
        {"ids", l_ids}, {"state", l_state}, {"head", l_head}, {"trailers", l_trailers},
        {"read", l_read}, {"write", l_write}, {"finish", l_finish}, {"result", l_result},
        {"stats", l_stats}, {"close", l_close}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"open", l_open}, {"live", l_live}, {"connects", l_connects}, {"version", l_version},
        {NULL, NULL}};
    rbx_new_class(L, XFER_MT, methods, l_close, 0);
    luaL_newlib(L, funcs);
    /* a sentinel whose finaliser cleans the multi handle up when the state closes */
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_shutdown);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "_sentinel");
    return 1;
}
