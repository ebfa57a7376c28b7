/* Child processes: started into their own process group (launch.c), non-blocking pipes, a pidfd to learn
 * of the exit through the loop. runbox.c.proc is the low level; lua/runbox/proc.lua the public API.
 *
 * The exit is handled here, not by a Lua task per process: the pidfd's loop callback reaps the
 * child, kills what it left in its group, and wakes the Lua waiters (p:exit_id). A time limit is
 * two loop timers (SIGTERM to the group, SIGKILL after the grace). While the child runs, the
 * registry holds the userdata, so a process nobody keeps a handle to still gets reaped.
 *
 * Every live child is on a list; at exit (rb_proc_reap_all) each remaining group is killed and
 * reaped, so no child outlives runbox and no zombie is left. */
#define _GNU_SOURCE
#include "launch.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lauxlib.h>

extern char **environ;

#define PROC_MT "runbox.proc"

typedef struct { rb_id *ids; int n, cap; } idlist;   /* loop ids waiting for something */

typedef struct proc {
    pid_t pid;
    int pidfd;
    int fds[3];              /* stdin (write end), stdout, stderr (read ends); -1 if not piped */
    int exited;              /* reaped */
    int status;              /* waitid si_status */
    int code;                /* CLD_EXITED / CLD_KILLED / CLD_DUMPED */
    int timed_out;           /* the time limit fired */
    int keep_group;          /* leave the group's other processes alone at the exit */
    int polled;              /* no pidfd: the exit is polled */
    double grace;            /* seconds from SIGTERM to SIGKILL at the time limit */
    rb_timer limit, kill, poll;   /* slot -1: not running */
    idlist exit_waiters;      /* loop ids to notify at the exit */
    struct capture {          /* a stream the engine reads itself (p:capture), by stream index */
        char *buf; size_t len, cap;
        size_t limit;         /* bytes kept from the end; 0: all */
        uint64_t dropped;     /* bytes cut from the front to keep the limit */
        int on;
    } cap[3];
    idlist collect_waiters;   /* ids to notify once exited and every capture ended */
    int grown;                /* bit per stream: its pipe was enlarged after a full read */
    int ref;                 /* registry reference while running, else LUA_NOREF */
    struct proc *prev, *next;
} proc;

static proc *live_head;

/* Registry references of exited processes, released at the next call that has a lua_State (the
 * exit is seen in a loop callback, which has none). */
static int *dead_refs; static int ndead, capdead;

static void release_refs(lua_State *L) {
    while (ndead) luaL_unref(L, LUA_REGISTRYINDEX, dead_refs[--ndead]);
}

static const rb_timer no_timer = {-1, 0};

static void stop_timer(rb_timer *t) {
    if (t->slot >= 0) rb_timer_stop(*t);
    *t = no_timer;
}

static void unlink_live(proc *p) {
    if (p->prev) p->prev->next = p->next; else if (live_head == p) live_head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) { rb_forget_fd(*fd); close(*fd); *fd = -1; }
}

/* Pushes a fresh loop id, added to the list, for a Lua task to wait on. */
static int push_new_id(lua_State *L, idlist *l) {
    if (l->n == l->cap) {
        int c = l->cap ? 2 * l->cap : 2;
        rb_id *w = realloc(l->ids, sizeof(rb_id) * (size_t)c);
        if (!w) return luaL_error(L, "out of memory");
        l->ids = w; l->cap = c;
    }
    rb_id id = rb_new_id();
    l->ids[l->n++] = id;
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/* Wakes every id of the list and empties it. */
static void notify_all(idlist *l) {
    for (int i = 0; i < l->n; i++) rb_notify(l->ids[i]);
    l->n = 0;
}

static void free_ids(idlist *l) {
    free(l->ids);
    *l = (idlist){0};
}

static int capturing(const proc *p) {
    return (p->cap[1].on && p->fds[1] >= 0) || (p->cap[2].on && p->fds[2] >= 0);
}

/* Wakes the collect waiters once the child is reaped and every captured stream has ended. */
static void check_done(proc *p) {
    if (p->exited && !capturing(p)) notify_all(&p->collect_waiters);
}

/* Reaps the child if it has exited (flags: WNOHANG to only look). Returns 1 once it is reaped.
 * Without a pidfd (pidfd_open can fail, e.g. under valgrind) waitid on the pid does the job. An
 * error other than EINTR marks the child gone, so nothing can loop on a child that is not ours. */
static int try_reap(proc *p, int flags) {
    if (p->exited) return 1;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc = p->pidfd >= 0 ? waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | flags)
                           : waitid(P_PID, (id_t)p->pid, &si, WEXITED | flags);
    if (rc < 0) {
        if (errno == EINTR) return 0;
        si.si_code = CLD_EXITED; si.si_status = 255;
    } else if (si.si_pid == 0) {
        return 0;                     /* still running */
    }
    p->exited = 1; p->code = si.si_code; p->status = si.si_status;
    close_fd(&p->pidfd);
    unlink_live(p);
    stop_timer(&p->limit); stop_timer(&p->kill); stop_timer(&p->poll);
    if (!p->keep_group) kill(-p->pid, SIGKILL);   /* what it left behind in its group */
    notify_all(&p->exit_waiters);
    free_ids(&p->exit_waiters);
    check_done(p);
    if (p->ref != LUA_NOREF) {
        if (ndead == capdead) {
            int n = capdead ? 2 * capdead : 16;
            int *q = realloc(dead_refs, sizeof(int) * (size_t)n);
            if (!q) abort();
            dead_refs = q; capdead = n;
        }
        dead_refs[ndead++] = p->ref;
        p->ref = LUA_NOREF;
    }
    return 1;
}

/* ---- the exit and the time limit, driven by the loop ---- */

static void on_pidfd(int fd, uint32_t events, void *ud) {
    (void)fd; (void)events;
    try_reap(ud, WNOHANG);
}

/* Without a pidfd (pidfd_open can fail, e.g. under valgrind) the exit is polled. */
static void on_poll(void *ud) {
    proc *p = ud;
    p->poll = no_timer;
    if (!try_reap(p, WNOHANG)) p->poll = rb_timer_start(0.01, rb_new_id(), on_poll, p);
}

static void signal_group(proc *p, int sig) {
    if (kill(-p->pid, sig) < 0 && !p->exited) kill(p->pid, sig);
}

static void on_kill(void *ud) {
    proc *p = ud;
    p->kill = no_timer;
    signal_group(p, SIGKILL);
}

static void on_limit(void *ud) {
    proc *p = ud;
    p->limit = no_timer;
    p->timed_out = 1;
    signal_group(p, SIGTERM);
    p->kill = rb_timer_start(p->grace, rb_new_id(), on_kill, p);
}

/* Kills the group (and the leader, in case it left the group) and waits for the leader. */
static void kill_and_reap(proc *p) {
    if (p->exited) return;
    kill(-p->pid, SIGKILL);
    kill(p->pid, SIGKILL);
    try_reap(p, 0);
}

void rb_proc_reap_all(void) {
    while (live_head) {
        proc *p = live_head;
        kill_and_reap(p);
        if (live_head == p) unlink_live(p);   /* always move on */
    }
}

static proc *check(lua_State *L) { return luaL_checkudata(L, 1, PROC_MT); }

/* "pipe" | "null" | "inherit" (| "stdout" for stderr) */
static const char *stream_opt(lua_State *L, const char *name, const char *dflt) {
    lua_getfield(L, 1, name);
    const char *v = lua_isnil(L, -1) ? dflt : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    int is_err = !strcmp(name, "stderr");
    if (strcmp(v, "pipe") && strcmp(v, "null") && strcmp(v, "inherit") && !(is_err && !strcmp(v, "stdout")))
        luaL_error(L, "proc.spawn: %s must be \"pipe\", \"null\" or \"inherit\"%s, not \"%s\"", name,
                   is_err ? " or \"stdout\"" : "", v);
    return v;
}

/* Builds the child's environment: the parent's unless clear_env, then env's entries (false removes). */
static char **build_env(lua_State *L, int *count) {
    lua_getfield(L, 1, "env");
    lua_getfield(L, 1, "clear_env");
    int clear = lua_toboolean(L, -1);
    lua_pop(L, 1);
    int has_env = lua_istable(L, -1);
    if (!has_env && !lua_isnil(L, -1)) luaL_error(L, "proc.spawn: env must be a table of NAME = value");
    lua_newtable(L);                    /* name -> "NAME=value" */
    if (!clear)
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq) continue;
            lua_pushlstring(L, *e, (size_t)(eq - *e));
            lua_pushstring(L, *e);
            lua_rawset(L, -3);
        }
    if (has_env) {
        lua_pushnil(L);
        while (lua_next(L, -3)) {
            if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "proc.spawn: env keys must be strings");
            const char *k = lua_tostring(L, -2);
            if (!*k || strchr(k, '=')) luaL_error(L, "proc.spawn: bad environment variable name '%s'", k);
            lua_pushvalue(L, -2);
            if (lua_type(L, -2) == LUA_TBOOLEAN && !lua_toboolean(L, -2)) lua_pushnil(L);
            else {
                if (!lua_isstring(L, -2)) luaL_error(L, "proc.spawn: env.%s must be a string or number", k);
                lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -2));
            }
            lua_rawset(L, -5);     /* [env, map, key, value, key, entry] */
            lua_pop(L, 1);
        }
    }
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) { n++; lua_pop(L, 1); }
    char **envp = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);   /* freed by the GC */
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, -3)) { envp[i++] = (char *)lua_tostring(L, -1); lua_pop(L, 1); }
    envp[i] = NULL;
    /* keep the strings and the array alive on the stack: [env, map, envp] */
    *count = n;
    return envp;
}

/* Only runbox's end is non-blocking: the child gets ordinary blocking stdio. */
static int pipe_pair(int p[2], int parent_end) {
    if (pipe2(p, O_CLOEXEC) < 0) return -1;
    for (int i = 0; i < 2; i++)      /* launch.c wants the child's ends above 0, 1 and 2 */
        if (p[i] < 3) {
            int fd = fcntl(p[i], F_DUPFD_CLOEXEC, 3);
            if (fd < 0) { int e = errno; close(p[0]); close(p[1]); errno = e; return -1; }
            close(p[i]);
            p[i] = fd;
        }
    fcntl(p[parent_end], F_SETFL, O_NONBLOCK);
    return 0;
}

/* A read that found the pipe full (64 KiB, the default size) means busy output: the pipe grows to
 * 1 MiB once, for fewer wake-ups. Not done up front: most commands print little, and a large
 * pipe costs its allocation and release on every process. */
#define PIPE_DEFAULT (64 * 1024)
static void grow_pipe(proc *p, int s, ssize_t n) {
    if (n < PIPE_DEFAULT || (p->grown & (1 << s))) return;
    p->grown |= 1 << s;
    fcntl(p->fds[s], F_SETPIPE_SZ, 1 << 20);
}

/* One shared read buffer (the engine has one thread): as large as a grown pipe. */
static char shared[1 << 20];

/* Appends to a capture, keeping at most the last 2 * limit bytes (trimmed to limit when over). */
static int capture_add(struct capture *c, const char *data, size_t n) {
    if (c->len + n > c->cap) {
        size_t want = c->cap ? c->cap : 4096;
        while (want < c->len + n) want *= 2;
        char *b = realloc(c->buf, want);
        if (!b) return -1;
        c->buf = b; c->cap = want;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    if (c->limit && c->len > 2 * c->limit) {
        size_t cut = c->len - c->limit;
        memmove(c->buf, c->buf + cut, c->limit);
        c->len = c->limit;
        c->dropped += cut;
    }
    return 0;
}

/* The loop callback of a captured stream: reads what is there; at the end closes it. */
static void on_capture(int fd, uint32_t events, void *ud) {
    (void)events;
    proc *p = ud;
    int s = fd == p->fds[1] ? 1 : 2;
    ssize_t n = read(fd, shared, sizeof shared);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n > 0) {
        grow_pipe(p, s, n);
        if (capture_add(&p->cap[s], shared, (size_t)n) == 0) return;
    }
    close_fd(&p->fds[s]);     /* the end, a read error or no memory: the stream is over */
    check_done(p);
}

static int l_spawn(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int argc = (int)luaL_len(L, 1);
    if (argc < 1) return luaL_error(L, "proc.spawn: the command is empty (give {\"program\", args...})");
    luaL_checkstack(L, argc + 16, "too many arguments");
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
    for (int i = 1; i <= argc; i++) {      /* the strings stay on the stack while we need them */
        lua_rawgeti(L, 1, i);
        if (!lua_isstring(L, -1)) return luaL_error(L, "proc.spawn: argument %d must be a string", i);
        argv[i - 1] = lua_tostring(L, -1);
    }
    argv[argc] = NULL;

    const char *in = stream_opt(L, "stdin", "null");
    const char *out = stream_opt(L, "stdout", "pipe");
    const char *err = stream_opt(L, "stderr", "pipe");
    lua_getfield(L, 1, "cwd");
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "proc.spawn: cwd must be a string (a folder path), not a %s", luaL_typename(L, -1));
    const char *cwd = lua_tostring(L, -1);
    int n_env;
    char **envp = build_env(L, &n_env);
    lua_getfield(L, 1, "timeout");
    double timeout = lua_isnil(L, -1) ? -1 : luaL_checknumber(L, -1);
    lua_getfield(L, 1, "kill_grace");
    double grace = lua_isnil(L, -1) ? 2 : luaL_checknumber(L, -1);
    lua_getfield(L, 1, "keep_group");
    int keep_group = lua_toboolean(L, -1);
    lua_pop(L, 3);
    if (timeout != timeout) timeout = 0;   /* NaN: no time at all */
    release_refs(L);

    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1};
    rb_launch launch = {.argv = argv, .envp = envp, .cwd = cwd,
                        .stdio = {RB_STDIO_NULL, RB_STDIO_NULL, RB_STDIO_NULL}};
    int rc = 0;
    if (!strcmp(in, "pipe")) { if (pipe_pair(pin, 1) < 0) { rc = errno; goto fail; } launch.stdio[0] = pin[0]; }
    else if (!strcmp(in, "inherit")) launch.stdio[0] = RB_STDIO_INHERIT;
    if (!strcmp(out, "pipe")) { if (pipe_pair(pout, 0) < 0) { rc = errno; goto fail; } launch.stdio[1] = pout[1]; }
    else if (!strcmp(out, "inherit")) launch.stdio[1] = RB_STDIO_INHERIT;
    if (!strcmp(err, "pipe")) { if (pipe_pair(perr, 0) < 0) { rc = errno; goto fail; } launch.stdio[2] = perr[1]; }
    else if (!strcmp(err, "inherit")) launch.stdio[2] = RB_STDIO_INHERIT;
    else if (!strcmp(err, "stdout")) launch.stdio[2] = RB_STDIO_STDOUT;

    pid_t pid;
    int pidfd;
    rc = rb_launch_start(&launch, &pid, &pidfd);
    if (rc != 0) goto fail;

    proc *p = lua_newuserdatauv(L, sizeof(proc), 1);
    memset(p, 0, sizeof *p);
    p->pid = pid;
    p->limit = p->kill = p->poll = no_timer;
    p->keep_group = keep_group; p->grace = grace;
    p->pidfd = pidfd;
    p->fds[0] = pin[1]; p->fds[1] = pout[0]; p->fds[2] = perr[0];
    if (pin[0] >= 0) close(pin[0]);
    if (pout[1] >= 0) close(pout[1]);
    if (perr[1] >= 0) close(perr[1]);
    p->next = live_head;
    if (live_head) live_head->prev = p;
    live_head = p;
    luaL_setmetatable(L, PROC_MT);
    lua_pushvalue(L, -1);
    p->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (p->pidfd < 0 || rb_fd_callback(p->pidfd, EPOLLIN, on_pidfd, p) < 0) {
        p->polled = 1;
        p->poll = rb_timer_start(0.01, rb_new_id(), on_poll, p);
    }
    if (timeout >= 0) p->limit = rb_timer_start(timeout, rb_new_id(), on_limit, p);
    return 1;

fail:
    for (int i = 0; i < 2; i++) {
        if (pin[i] >= 0) close(pin[i]);
        if (pout[i] >= 0) close(pout[i]);
        if (perr[i] >= 0) close(perr[i]);
    }
    lua_pushnil(L);
    if ((rc == ENOENT || rc == ENOTDIR || rc == EACCES) && cwd && access(cwd, X_OK) != 0)
        lua_pushfstring(L, "cannot run '%s': working folder '%s': %s", argv[0], cwd, strerror(errno));
    else if (rc == ENOENT && !strchr(argv[0], '/'))
        lua_pushfstring(L, "cannot run '%s': not found on PATH", argv[0]);
    else
        lua_pushfstring(L, "cannot run '%s': %s", argv[0], strerror(rc));
    return 2;
}

static int stream_index(lua_State *L, int i) {
    static const char *const names[] = {"stdin", "stdout", "stderr", NULL};
    return luaL_checkoption(L, i, NULL, names);
}

/* p:fd(stream) -> fd or nil */
static int l_fd(lua_State *L) {
    proc *p = check(L);
    int fd = p->fds[stream_index(L, 2)];
    if (fd < 0) lua_pushnil(L); else lua_pushinteger(L, fd);
    return 1;
}

/* p:read(stream, max) -> data | "" at end | nil, "again" | nil, err */
static int l_read(lua_State *L) {
    proc *p = check(L);
    int s = stream_index(L, 2);
    lua_Integer max = luaL_optinteger(L, 3, 65536);
    if (s == 0) return luaL_argerror(L, 2, "cannot read stdin");
    if (max <= 0) return luaL_argerror(L, 3, "must be positive");
    if (p->fds[s] < 0) { lua_pushliteral(L, ""); return 1; }
    if (p->cap[s].on) return luaL_error(L, "%s is captured by the engine: use p:collect()", s == 1 ? "stdout" : "stderr");
    /* The shared buffer: a fresh box per read cost an allocation, and for read_all's 1 MiB reads
       an mmap, page faults and a munmap on every chunk; its pages are touched only as far as
       reads fill it. */
    luaL_Buffer b;
    char *buf = (size_t)max <= sizeof shared ? shared : luaL_buffinitsize(L, &b, (size_t)max);
    ssize_t n = read(p->fds[s], buf, (size_t)max);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) { lua_pushnil(L); lua_pushliteral(L, "again"); return 2; }
        lua_pushnil(L); lua_pushstring(L, strerror(errno)); return 2;
    }
    if (buf == shared) lua_pushlstring(L, buf, (size_t)n);
    else luaL_pushresultsize(&b, (size_t)n);
    if (n == 0) close_fd(&p->fds[s]);
    else grow_pipe(p, s, n);
    return 1;
}

/* p:write(data, offset) -> bytes written | nil, "again" | nil, err */
static int l_write(lua_State *L) {
    proc *p = check(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    lua_Integer off = luaL_optinteger(L, 3, 0);
    if (off < 0 || (size_t)off > len) return luaL_argerror(L, 3, "offset out of range");
    if (p->fds[0] < 0) { lua_pushnil(L); lua_pushliteral(L, "stdin is closed"); return 2; }
    ssize_t n = write(p->fds[0], data + off, len - (size_t)off);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) { lua_pushnil(L); lua_pushliteral(L, "again"); return 2; }
        lua_pushnil(L);
        lua_pushstring(L, errno == EPIPE ? "the process closed its stdin" : strerror(errno));
        return 2;
    }
    lua_pushinteger(L, n);
    return 1;
}

static int l_close_stream(lua_State *L) {
    proc *p = check(L);
    close_fd(&p->fds[stream_index(L, 2)]);
    return 0;
}

/* p:status() -> nil while running | "exit", code, timed_out | "signal", signo, timed_out */
static int l_status(lua_State *L) {
    proc *p = check(L);
    release_refs(L);
    if (!p->exited) { lua_pushnil(L); return 1; }
    if (p->code == CLD_EXITED) lua_pushliteral(L, "exit"); else lua_pushliteral(L, "signal");
    lua_pushinteger(L, p->status);
    lua_pushboolean(L, p->timed_out);
    return 3;
}

/* p:exit_watch() -> "pidfd" | "poll" (no pidfd: the exit is polled every 10 ms) */
static int l_exit_watch(lua_State *L) {
    proc *p = check(L);
    lua_pushstring(L, p->polled ? "poll" : "pidfd");
    return 1;
}

/* p:exit_id() -> a loop id notified at the exit, or nil when it has exited already */
static int l_exit_id(lua_State *L) {
    proc *p = check(L);
    if (p->exited) { lua_pushnil(L); return 1; }
    return push_new_id(L, &p->exit_waiters);
}

/* p:capture(stream, limit): the engine reads the stream itself from now on, keeping the last
 * limit bytes (0 or none: all), with no Lua per chunk. A stream that is not piped captures "". */
static int l_capture(lua_State *L) {
    proc *p = check(L);
    int s = stream_index(L, 2);
    lua_Integer limit = luaL_optinteger(L, 3, 0);
    if (s == 0) return luaL_argerror(L, 2, "stdin cannot be captured");
    if (limit < 0) return luaL_argerror(L, 3, "must be 0 (all) or positive");
    struct capture *c = &p->cap[s];
    if (c->on) return 0;
    c->on = 1; c->limit = (size_t)limit;
    if (p->fds[s] >= 0 && rb_fd_callback(p->fds[s], EPOLLIN, on_capture, p) < 0)
        return luaL_error(L, "cannot watch %s: %s", s == 1 ? "stdout" : "stderr", strerror(errno));
    return 0;
}

/* p:collect_id() -> a loop id notified once the process has exited and its captured streams have
 * ended, or nil when that is so already */
static int l_collect_id(lua_State *L) {
    proc *p = check(L);
    release_refs(L);
    if (p->exited && !capturing(p)) { lua_pushnil(L); return 1; }
    return push_new_id(L, &p->collect_waiters);
}

/* p:captured(stream) -> text, bytes dropped from its front. The buffer is handed over: a second
 * call returns what came since. */
static int l_captured(lua_State *L) {
    proc *p = check(L);
    struct capture *c = &p->cap[stream_index(L, 2)];
    lua_pushlstring(L, c->buf ? c->buf : "", c->len);
    lua_pushinteger(L, (lua_Integer)c->dropped);
    free(c->buf);
    c->buf = NULL; c->len = c->cap = 0;
    return 2;
}

/* p:kill(signo, group) -> true | nil, err. Signals the whole process group unless group is false. */
static int l_kill(lua_State *L) {
    proc *p = check(L);
    int sig = (int)luaL_optinteger(L, 2, SIGTERM);
    int group = lua_isnoneornil(L, 3) ? 1 : lua_toboolean(L, 3);
    int rc = group ? kill(-p->pid, sig) : -1;
    if (!p->exited && (rc < 0 || !group)) rc = kill(p->pid, sig);
    if (rc < 0 && errno != ESRCH) { lua_pushnil(L); lua_pushstring(L, strerror(errno)); return 2; }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_pid(lua_State *L) { lua_pushinteger(L, check(L)->pid); return 1; }

/* __gc / p:destroy(): a process nobody holds any more is killed with its group and reaped. */
static int l_destroy(lua_State *L) {
    proc *p = check(L);
    kill_and_reap(p);
    release_refs(L);
    for (int i = 0; i < 3; i++) {
        close_fd(&p->fds[i]);
        free(p->cap[i].buf);
        p->cap[i].buf = NULL; p->cap[i].len = p->cap[i].cap = 0;
    }
    close_fd(&p->pidfd);
    free_ids(&p->exit_waiters);
    free_ids(&p->collect_waiters);
    return 0;
}

static int l_reap_all(lua_State *L) { rb_proc_reap_all(); release_refs(L); return 0; }

/* kill_all(signo): signals the group of every running child (the scheduler's "cancel everything") */
static int l_kill_all(lua_State *L) {
    int sig = (int)luaL_optinteger(L, 1, SIGKILL);
    for (proc *p = live_head; p; p = p->next) signal_group(p, sig);
    return 0;
}

/* kill_pid(pid, signo) -> true | nil, err: kill(2) for processes runbox did not start itself
 * (a negative pid names a process group). ESRCH counts as done. */
static int l_kill_pid(lua_State *L) {
    lua_Integer pid = luaL_checkinteger(L, 1);
    int sig = (int)luaL_optinteger(L, 2, SIGTERM);
    if (pid == 0 || pid == -1 || pid < INT32_MIN || pid > INT32_MAX)
        return luaL_argerror(L, 1, "a process id or a negative process group id (not 0 or -1)");
    if (kill((pid_t)pid, sig) < 0 && errno != ESRCH) { lua_pushnil(L); lua_pushstring(L, strerror(errno)); return 2; }
    lua_pushboolean(L, 1);
    return 1;
}

int luaopen_runbox_c_proc(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"fd", l_fd}, {"read", l_read}, {"write", l_write}, {"close_stream", l_close_stream},
        {"status", l_status}, {"exit_id", l_exit_id}, {"capture", l_capture}, {"collect_id", l_collect_id},
        {"captured", l_captured}, {"exit_watch", l_exit_watch}, {"kill", l_kill}, {"pid", l_pid},
        {"destroy", l_destroy}, {NULL, NULL}};
    luaL_newmetatable(L, PROC_MT);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_destroy);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg f[] = {{"spawn", l_spawn}, {"reap_all", l_reap_all}, {"kill_all", l_kill_all},
                                 {"kill_pid", l_kill_pid}, {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
