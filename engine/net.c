/* runbox.c.net: non-blocking sockets and pipes for the Lua layer (lua/runbox/net.lua).
 *
 * Every call returns at once. Calls that would block return nil, "again" and the Lua wrapper parks
 * the task with sched.wait_fd before retrying. Other failures return nil, message. Descriptors are
 * plain integers owned by the Lua socket objects; close() unhooks them from the loop first.
 *
 * Name resolution uses getaddrinfo, which blocks: fine for numeric addresses and "localhost" (served
 * from /etc/hosts), not meant for names that need DNS. */
#define _GNU_SOURCE   /* accept4, pipe2 */
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <lauxlib.h>

#define SOCK_FLAGS (SOCK_NONBLOCK | SOCK_CLOEXEC)

static int push_fail(lua_State *L, const char *fmt, ...) {
    lua_pushnil(L);
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return 2;
}

static int push_again(lua_State *L) {
    lua_pushnil(L);
    lua_pushliteral(L, "again");
    return 2;
}

static int check_fd(lua_State *L, int i) {
    lua_Integer fd = luaL_checkinteger(L, i);
    luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, i, "not a file descriptor");
    return (int)fd;
}

/* Nagle's algorithm delays small writes (a streamed chunk, an SSE event) by up to 40 ms. */
static void set_nodelay(int fd, int family) {
    if (family != AF_INET && family != AF_INET6) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int resolve(lua_State *L, const char *host, int port, int passive, struct addrinfo **out) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE : AI_ADDRCONFIG};
    int rc = getaddrinfo(host, service, &hints, out);
    if (rc == EAI_SYSTEM) return push_fail(L, "cannot resolve '%s': %s", host ? host : "*", strerror(errno));
    if (rc != 0) return push_fail(L, "cannot resolve '%s': %s", host ? host : "*", gai_strerror(rc));
    return 0;
}

static int check_port(lua_State *L, int i) {
    lua_Integer port = luaL_checkinteger(L, i);
    luaL_argcheck(L, port >= 0 && port <= 65535, i, "port must be 0..65535");
    return (int)port;
}

/* "host:port", "[v6]:port" or the unix path ("" for an unnamed unix peer). */
static void push_addr(lua_State *L, const struct sockaddr_storage *sa, socklen_t len) {
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        lua_pushfstring(L, "%s:%d", host, (int)ntohs(in->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        lua_pushfstring(L, "[%s]:%d", host, (int)ntohs(in6->sin6_port));
    } else if (sa->ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const void *)sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? len - off : 0;
        if (n > sizeof un->sun_path) n = sizeof un->sun_path;
        lua_pushlstring(L, un->sun_path, strnlen(un->sun_path, n));
    } else {
        lua_pushliteral(L, "?");
    }
}

static int local_port(int fd) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0) return -1;
    if (sa.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&sa)->sin_port);
    if (sa.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    return -1;
}

/* listen_tcp(host|nil, port, backlog) -> fd, bound_port | nil, err */
static int l_listen_tcp(lua_State *L) {
    const char *host = luaL_optstring(L, 1, NULL);
    int port = check_port(L, 2);
    int backlog = (int)luaL_optinteger(L, 3, 511);
    struct addrinfo *ai;
    if (resolve(L, host, port, 1, &ai)) return 2;
    int err = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_FLAGS, a->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            freeaddrinfo(ai);
            lua_pushinteger(L, fd);
            lua_pushinteger(L, local_port(fd));
            return 2;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(ai);
    return push_fail(L, "cannot listen on %s:%d: %s", host ? host : "*", port, strerror(err));
}

static int unix_addr(lua_State *L, const char *path, struct sockaddr_un *un) {
    size_t n = strlen(path);
    memset(un, 0, sizeof *un);
    un->sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof un->sun_path)
        return push_fail(L, "unix socket path '%s' must be 1..%d bytes long (use a shorter directory)", path,
                         (int)sizeof un->sun_path - 1);
    memcpy(un->sun_path, path, n);
    return 0;
}

/* listen_unix(path, backlog) -> fd | nil, err. A leftover socket file is replaced; anything else
 * at path is an error (we never delete a user's file). */
static int l_listen_unix(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int backlog = (int)luaL_optinteger(L, 2, 511);
    struct sockaddr_un un;
    if (unix_addr(L, path, &un)) return 2;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return push_fail(L, "cannot listen on unix socket '%s': a file that is not a socket is in the way", path);
        if (unlink(path) < 0) return push_fail(L, "cannot remove stale socket '%s': %s", path, strerror(errno));
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_FLAGS, 0);
    if (fd < 0) return push_fail(L, "socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&un, sizeof un) < 0 || listen(fd, backlog) < 0) {
        int err = errno;
        close(fd);
        return push_fail(L, "cannot listen on unix socket '%s': %s", path, strerror(err));
    }
    lua_pushinteger(L, fd);
    return 1;
}

/* accept(fd) -> fd, peer | nil, "again" | nil, err */
static int l_accept(lua_State *L) {
    int lfd = check_fd(L, 1);
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = accept4(lfd, (struct sockaddr *)&sa, &len, SOCK_FLAGS);
    if (fd < 0) {
        /* a client that gave up before we accepted it is not the listener's failure */
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
            return push_again(L);
        return push_fail(L, "accept: %s", strerror(errno));
    }
    set_nodelay(fd, sa.ss_family);
    lua_pushinteger(L, fd);
    push_addr(L, &sa, len);
    return 2;
}

/* connect_tcp(host, port[, skip]) -> fd, in_progress, index | nil, err
 * Tries the resolved addresses from number skip+1 on; index says which one was used so a caller
 * whose asynchronous connect failed can go on with the next. */
static int l_connect_tcp(lua_State *L) {
    const char *host = luaL_checkstring(L, 1);
    int port = check_port(L, 2);
    lua_Integer skip = luaL_optinteger(L, 3, 0);
    struct addrinfo *ai;
    if (resolve(L, host, port, 0, &ai)) return 2;
    int err = 0, i = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next, i++) {
        if (i < skip) continue;
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_FLAGS, a->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        set_nodelay(fd, a->ai_family);
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc == 0 || errno == EINPROGRESS) {
            freeaddrinfo(ai);
            lua_pushinteger(L, fd);
            lua_pushboolean(L, rc != 0);
            lua_pushinteger(L, i + 1);
            return 3;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(ai);
    if (!err) return push_fail(L, "cannot connect to %s:%d: no more addresses", host, port);
    return push_fail(L, "cannot connect to %s:%d: %s", host, port, strerror(err));
}

/* connect_unix(path) -> fd, in_progress | nil, "again" (listener backlog full) | nil, err */
static int l_connect_unix(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct sockaddr_un un;
    if (unix_addr(L, path, &un)) return 2;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_FLAGS, 0);
    if (fd < 0) return push_fail(L, "socket: %s", strerror(errno));
    int rc = connect(fd, (struct sockaddr *)&un, sizeof un);
    if (rc == 0 || errno == EINPROGRESS) {
        lua_pushinteger(L, fd);
        lua_pushboolean(L, rc != 0);
        return 2;
    }
    int err = errno;
    close(fd);
    if (err == EAGAIN) return push_again(L);
    return push_fail(L, "cannot connect to unix socket '%s': %s", path, strerror(err));
}

/* finish_connect(fd) -> true | nil, err (the outcome of an asynchronous connect) */
static int l_finish_connect(lua_State *L) {
    int fd = check_fd(L, 1);
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) soerr = errno;
    if (soerr) return push_fail(L, "%s", strerror(soerr));
    lua_pushboolean(L, 1);
    return 1;
}

/* read(fd, max) -> data | "" at end of file | nil, "again" | nil, err */
static int l_read(lua_State *L) {
    int fd = check_fd(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, max > 0 && max <= (1 << 26), 2, "max must be 1..64 MiB");
    static char shared[65536];   /* one thread: no box allocated per read (see proc.c) */
    luaL_Buffer b;
    char *p = (size_t)max <= sizeof shared ? shared : luaL_buffinitsize(L, &b, (size_t)max);
    ssize_t n;
    do n = read(fd, p, (size_t)max); while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return push_again(L);
        return push_fail(L, "%s", strerror(errno));
    }
    if (p == shared) lua_pushlstring(L, p, (size_t)n);
    else luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* write(fd, data[, offset]) -> bytes written | nil, "again" | nil, err. offset: bytes of data
 * already written, so a caller can resume a partial write without copying the rest. */
static int l_write(lua_State *L) {
    int fd = check_fd(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    lua_Integer off = luaL_optinteger(L, 3, 0);
    luaL_argcheck(L, off >= 0 && (size_t)off <= len, 3, "offset outside the data");
    ssize_t n;
    /* MSG_NOSIGNAL: a peer that went away is EPIPE, not SIGPIPE; pipes are not sockets */
    do n = send(fd, data + off, len - (size_t)off, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    if (n < 0 && errno == ENOTSOCK)
        do n = write(fd, data + off, len - (size_t)off); while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return push_again(L);
        return push_fail(L, "%s", strerror(errno));
    }
    lua_pushinteger(L, n);
    return 1;
}

static int l_shutdown_write(lua_State *L) {
    int fd = check_fd(L, 1);
    if (shutdown(fd, SHUT_WR) < 0) return push_fail(L, "shutdown: %s", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_close(lua_State *L) {
    int fd = check_fd(L, 1);
    rb_forget_fd(fd);   /* wakes any waiter and drops the epoll registration first */
    if (close(fd) < 0 && errno != EINTR) return push_fail(L, "close: %s", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/* pipe() -> rfd, wfd, both non-blocking and close-on-exec */
static int l_pipe(lua_State *L) {
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return push_fail(L, "pipe: %s", strerror(errno));
    lua_pushinteger(L, p[0]);
    lua_pushinteger(L, p[1]);
    return 2;
}

/* peer(fd) -> address string | nil, err */
static int l_peer(lua_State *L) {
    int fd = check_fd(L, 1);
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0) return push_fail(L, "%s", strerror(errno));
    push_addr(L, &sa, len);
    return 1;
}

int luaopen_runbox_c_net(lua_State *L) {
    static const luaL_Reg f[] = {
        {"listen_tcp", l_listen_tcp}, {"listen_unix", l_listen_unix}, {"accept", l_accept},
        {"connect_tcp", l_connect_tcp}, {"connect_unix", l_connect_unix},
        {"finish_connect", l_finish_connect}, {"read", l_read}, {"write", l_write},
        {"shutdown_write", l_shutdown_write}, {"close", l_close}, {"pipe", l_pipe}, {"peer", l_peer},
        {NULL, NULL}};
    luaL_newlib(L, f);
    return 1;
}
