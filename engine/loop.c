/* Event loop: epoll, timer heap, signals through a self-pipe, ready queue. See loop.h. */
#define _GNU_SOURCE
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>

struct fdrec {
    rb_id rid, wid;         /* Lua waiters (0: none) */
    rb_fd_cb cb;            /* or a C callback owner */
    void *ud;
    uint32_t cbmask;
    uint32_t armed;         /* mask currently registered with epoll */
};

struct timer {
    double at;
    rb_id id;
    rb_timer_cb cb;
    void *ud;
    int32_t heap_pos;       /* -1: free slot */
};

static struct {
    int epfd;
    rb_id next_id;
    struct fdrec *fds; int nfds;
    struct timer *timers; int ntimers; int32_t *free_slots; int nfree;
    int32_t *heap; int heap_len;
    rb_id *ready, *out; int nready, cap_ready, cap_out;
    int sigpipe[2];          /* self-pipe: signal handlers write the signal number */
    int sigs[16]; int nsigs;
} L0;

double rb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *grow(void *p, int *cap, int need, size_t elem) {
    if (need <= *cap) return p;
    int n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    void *q = realloc(p, (size_t)n * elem);
    if (!q) abort();        /* out of memory in the loop itself: nothing sensible to recover */
    if (n > *cap) memset((char *)q + (size_t)*cap * elem, 0, (size_t)(n - *cap) * elem);
    *cap = n;
    return q;
}

/* Signals arrive through a self-pipe rather than a signalfd: a signalfd needs the signals blocked,
 * and a blocked mask is inherited by every child (os.execute, io.popen, libraries), which then
 * cannot be stopped with SIGTERM. Caught signals are reset to their defaults by exec. */
static volatile sig_atomic_t undelivered[65];   /* per signal: arrived, not yet reported */

static void on_signal(int sig) {
    int saved = errno;
    undelivered[sig]++;
    unsigned char b = (unsigned char)sig;
    if (write(L0.sigpipe[1], &b, 1) < 0) { /* pipe full: the loop has plenty of signals to read */ }
    errno = saved;
}

/* SIGPIPE is caught, not ignored: an ignored signal would stay ignored in children after exec. */
static void on_sigpipe(int sig) { (void)sig; }

int rb_loop_init(void) {
    L0.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (L0.epfd < 0) return -1;
    if (pipe2(L0.sigpipe, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_sigpipe;
    sigaction(SIGPIPE, &sa, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = L0.sigpipe[0]};
    epoll_ctl(L0.epfd, EPOLL_CTL_ADD, L0.sigpipe[0], &ev);
    L0.next_id = 1;
    return 0;
}

void rb_loop_free(void) {
    signal(SIGINT, SIG_DFL); signal(SIGTERM, SIG_DFL); signal(SIGHUP, SIG_DFL);
    close(L0.epfd); close(L0.sigpipe[0]); close(L0.sigpipe[1]);
    free(L0.fds); free(L0.timers); free(L0.free_slots); free(L0.heap); free(L0.ready); free(L0.out);
    memset(&L0, 0, sizeof L0);
}

rb_id rb_new_id(void) { return L0.next_id++; }

void rb_notify(rb_id id) {
    if (!id) return;
    L0.ready = grow(L0.ready, &L0.cap_ready, L0.nready + 1, sizeof(rb_id));
    L0.ready[L0.nready++] = id;
}

/* ---- fds ---- */

static struct fdrec *rec(int fd) {
    if (fd < 0) return NULL;
    L0.fds = grow(L0.fds, &L0.nfds, fd + 1, sizeof(struct fdrec));
    return &L0.fds[fd];
}

static int rearm(int fd, struct fdrec *r) {
    uint32_t want = r->cb ? r->cbmask : ((r->rid ? EPOLLIN : 0) | (r->wid ? EPOLLOUT : 0));
    if (want == r->armed) return 0;
    struct epoll_event ev = {.events = want, .data.fd = fd};
    int op = !r->armed ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    if (epoll_ctl(L0.epfd, op, fd, &ev) < 0) {
        /* fd was closed and reused behind our back: start over with a fresh registration */
        if (op == EPOLL_CTL_MOD && errno == ENOENT) op = EPOLL_CTL_ADD;
        else if (op == EPOLL_CTL_ADD && errno == EEXIST) op = EPOLL_CTL_MOD;
        else if (op == EPOLL_CTL_DEL) { r->armed = 0; return 0; }
        else return -1;
        if (epoll_ctl(L0.epfd, op, fd, &ev) < 0) return -1;
    }
    r->armed = want;
    return 0;
}

int rb_watch_fd(int fd, char dir, rb_id id) {
    struct fdrec *r = rec(fd);
    if (!r) { errno = EBADF; return -1; }
    rb_id *slot = dir == 'w' ? &r->wid : &r->rid;
    if (*slot) { errno = EBUSY; return -1; }   /* one waiter per direction: a second would strand the first */
    *slot = id;
    if (rearm(fd, r) < 0) {
        *slot = 0;
        if (errno == EPERM) {   /* regular files are always ready: epoll refuses them */
            rb_notify(id);
            return 0;
        }
        return -1;
    }
    return 0;
}

void rb_unwatch_fd(int fd, char dir, rb_id id) {
    if (fd < 0 || fd >= L0.nfds) return;
    struct fdrec *r = &L0.fds[fd];
    rb_id *slot = dir == 'w' ? &r->wid : &r->rid;
    if (id && *slot != id) return;   /* the fd was closed and reused: that watch is someone else's */
    *slot = 0;
    rearm(fd, r);
}

void rb_forget_fd(int fd) {
    if (fd < 0 || fd >= L0.nfds) return;
    struct fdrec *r = &L0.fds[fd];
    if (r->armed) epoll_ctl(L0.epfd, EPOLL_CTL_DEL, fd, NULL);
    rb_notify(r->rid); rb_notify(r->wid);   /* waiters wake and find the fd gone */
    memset(r, 0, sizeof *r);
}

int rb_fd_callback(int fd, uint32_t events, rb_fd_cb cb, void *ud) {
    struct fdrec *r = rec(fd);
    if (!r) return -1;
    r->cb = events ? cb : NULL; r->ud = ud; r->cbmask = events;
    return rearm(fd, r);
}

/* ---- timers: a binary heap of slots ordered by deadline ---- */

static int tless(int32_t a, int32_t b) { return L0.timers[a].at < L0.timers[b].at; }
static void hset(int pos, int32_t slot) { L0.heap[pos] = slot; L0.timers[slot].heap_pos = pos; }

static void sift_up(int pos) {
    int32_t s = L0.heap[pos];
    while (pos > 0) {
        int parent = (pos - 1) / 2;
        if (!tless(s, L0.heap[parent])) break;
        hset(pos, L0.heap[parent]);
        pos = parent;
    }
    hset(pos, s);
}

static void sift_down(int pos) {
    int32_t s = L0.heap[pos];
    for (;;) {
        int c = 2 * pos + 1;
        if (c >= L0.heap_len) break;
        if (c + 1 < L0.heap_len && tless(L0.heap[c + 1], L0.heap[c])) c++;
        if (!tless(L0.heap[c], s)) break;
        hset(pos, L0.heap[c]);
        pos = c;
    }
    hset(pos, s);
}

static void heap_remove(int pos) {
    int32_t slot = L0.heap[pos];
    L0.heap_len--;
    if (pos < L0.heap_len) {
        hset(pos, L0.heap[L0.heap_len]);
        sift_down(pos);
        sift_up(L0.timers[L0.heap[pos]].heap_pos);
    }
    L0.timers[slot].heap_pos = -1;
    L0.timers[slot].id = 0;
    L0.free_slots[L0.nfree++] = slot;
}

rb_timer rb_timer_start(double delay, rb_id id, rb_timer_cb cb, void *ud) {
    int32_t slot;
    if (L0.nfree) slot = L0.free_slots[--L0.nfree];
    else {
        int cap = L0.ntimers, n = L0.ntimers + 1;
        L0.timers = grow(L0.timers, &cap, n, sizeof(struct timer));
        int hc = L0.ntimers, fc = L0.ntimers;
        L0.heap = grow(L0.heap, &hc, cap, sizeof(int32_t));
        L0.free_slots = grow(L0.free_slots, &fc, cap, sizeof(int32_t));
        for (int i = L0.ntimers + 1; i < cap; i++) L0.free_slots[L0.nfree++] = i;
        slot = L0.ntimers;
        L0.ntimers = cap;
    }
    struct timer *t = &L0.timers[slot];
    t->at = rb_now() + (delay > 0 ? delay : 0);
    t->id = id; t->cb = cb; t->ud = ud;
    L0.heap[L0.heap_len] = slot;
    t->heap_pos = L0.heap_len++;
    sift_up(t->heap_pos);
    return (rb_timer){slot, id};
}

void rb_timer_stop(rb_timer t) {
    if (t.slot < 0 || t.slot >= L0.ntimers) return;
    struct timer *tm = &L0.timers[t.slot];
    if (tm->heap_pos < 0 || tm->id != t.id) return;   /* already fired or reused */
    heap_remove(tm->heap_pos);
}

static void fire_timers(void) {
    double now = rb_now();
    while (L0.heap_len && L0.timers[L0.heap[0]].at <= now) {
        struct timer t = L0.timers[L0.heap[0]];
        heap_remove(0);
        if (t.cb) t.cb(t.ud); else rb_notify(t.id);
    }
}

/* ---- poll ---- */

/* Consumes one arrival of sig, with the handler kept out while the count changes. */
static int consume(int sig) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, sig);
    sigprocmask(SIG_BLOCK, &block, &old);
    int had = undelivered[sig] > 0;
    if (had) undelivered[sig]--;
    sigprocmask(SIG_SETMASK, &old, NULL);
    return had;
}

int rb_take_signal(int sig) { return sig > 0 && sig < 65 && consume(sig); }

static void read_signals(void) {
    unsigned char b[64];
    ssize_t n;
    while ((n = read(L0.sigpipe[0], b, sizeof b)) > 0)
        for (ssize_t i = 0; i < n; i++)   /* skip arrivals already taken by rb_take_signal */
            if (b[i] < 65 && consume(b[i]) && L0.nsigs < (int)(sizeof L0.sigs / sizeof L0.sigs[0]))
                L0.sigs[L0.nsigs++] = b[i];
}

int rb_poll(double timeout, const rb_id **ids, int *nids, const int **sigs, int *nsigs) {
    L0.nsigs = 0;
    fire_timers();
    if (L0.nready) timeout = 0;
    if (L0.heap_len) {
        double until = L0.timers[L0.heap[0]].at - rb_now();
        if (until < 0) until = 0;
        if (timeout < 0 || until < timeout) timeout = until;
    }
    if (timeout > 3600) timeout = 3600;   /* a far deadline (sleep(math.huge)) must not overflow int */
    int ms = timeout < 0 ? -1 : (int)ceil(timeout * 1000.0);
    struct epoll_event evs[256];
    int n = epoll_wait(L0.epfd, evs, 256, ms);
    if (n < 0 && errno != EINTR) return -1;
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        uint32_t e = evs[i].events;
        if (fd == L0.sigpipe[0]) { read_signals(); continue; }
        if (fd >= L0.nfds) continue;
        struct fdrec *r = &L0.fds[fd];
        if (r->cb) { r->cb(fd, e, r->ud); continue; }
        int bad = (e & (EPOLLERR | EPOLLHUP)) != 0;
        if (r->rid && (bad || (e & EPOLLIN))) { rb_notify(r->rid); r->rid = 0; }
        if (r->wid && (bad || (e & EPOLLOUT))) { rb_notify(r->wid); r->wid = 0; }
        rearm(fd, r);
    }
    fire_timers();
    /* hand the ready queue out and start a fresh one, so callbacks may notify while Lua reads */
    rb_id *t = L0.out; int tc = L0.cap_out;
    L0.out = L0.ready; L0.cap_out = L0.cap_ready;
    L0.ready = t; L0.cap_ready = tc;
    *ids = L0.out; *nids = L0.nready;
    L0.nready = 0;
    *sigs = L0.sigs; *nsigs = L0.nsigs;
    return 0;
}

/* ---- Lua binding: runbox.c.loop (used by the scheduler, not by recipes) ---- */

static int l_new_id(lua_State *L) { lua_pushinteger(L, (lua_Integer)rb_new_id()); return 1; }
static int l_notify(lua_State *L) { rb_notify((rb_id)luaL_checkinteger(L, 1)); return 0; }
static int l_now(lua_State *L) { lua_pushnumber(L, rb_now()); return 1; }

static char dir_arg(lua_State *L, int i) {
    const char *d = luaL_checkstring(L, i);
    if (strcmp(d, "r") && strcmp(d, "w")) luaL_argerror(L, i, "expected \"r\" or \"w\"");
    return d[0];
}

static int l_watch(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    char dir = dir_arg(L, 2);
    rb_id id = rb_new_id();
    if (rb_watch_fd(fd, dir, id) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, errno == EBUSY ? "another task is already waiting on it in that direction" : strerror(errno));
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/* unwatch(fd, dir [, id]): with id, only if that watch is still the fd's */
static int l_unwatch(lua_State *L) {
    rb_unwatch_fd((int)luaL_checkinteger(L, 1), dir_arg(L, 2), (rb_id)luaL_optinteger(L, 3, 0));
    return 0;
}

static int l_timer(lua_State *L) {
    double delay = luaL_checknumber(L, 1);
    rb_id id = lua_isnoneornil(L, 2) ? rb_new_id() : (rb_id)luaL_checkinteger(L, 2);
    rb_timer t = rb_timer_start(delay, id, NULL, NULL);
    lua_pushinteger(L, (lua_Integer)t.id);
    lua_pushinteger(L, t.slot);
    return 2;
}

static int l_timer_stop(lua_State *L) {
    rb_timer t = {(int32_t)luaL_checkinteger(L, 2), (rb_id)luaL_checkinteger(L, 1)};
    rb_timer_stop(t);
    return 0;
}

/* poll(timeout, ids_table) -> n, signals (a table or nil). Reuses ids_table to spare garbage. */
static int l_poll(lua_State *L) {
    double timeout = luaL_optnumber(L, 1, -1);
    luaL_checktype(L, 2, LUA_TTABLE);
    const rb_id *ids; const int *sigs; int nids, nsigs;
    if (rb_poll(timeout, &ids, &nids, &sigs, &nsigs) < 0) return luaL_error(L, "epoll_wait: %s", strerror(errno));
    for (int i = 0; i < nids; i++) { lua_pushinteger(L, (lua_Integer)ids[i]); lua_rawseti(L, 2, i + 1); }
    lua_pushinteger(L, nids);
    if (!nsigs) { lua_pushnil(L); return 2; }
    lua_createtable(L, nsigs, 0);
    for (int i = 0; i < nsigs; i++) { lua_pushinteger(L, sigs[i]); lua_rawseti(L, -2, i + 1); }
    return 2;
}

int luaopen_runbox_c_loop(lua_State *L) {
    static const luaL_Reg f[] = {
        {"new_id", l_new_id}, {"notify", l_notify}, {"now", l_now}, {"watch", l_watch},
        {"unwatch", l_unwatch}, {"timer", l_timer}, {"timer_stop", l_timer_stop}, {"poll", l_poll},
        {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
