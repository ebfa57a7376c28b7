/* See launch.h. The child shares runbox's memory until it calls exec (CLONE_VM | CLONE_VFORK: the
 * parent waits meanwhile), so between the clone and the exec it only makes system calls: no
 * allocation, no locks. It runs on a stack of its own that every launch reuses (the engine has
 * one thread), and signals stay blocked until its own handlers are back at their defaults. */
#define _GNU_SOURCE
#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHILD_CODE __attribute__((no_sanitize("address")))
#endif
#endif
#if !defined(CHILD_CODE) && defined(__SANITIZE_ADDRESS__)
#define CHILD_CODE __attribute__((no_sanitize_address))
#endif
#ifndef CHILD_CODE
#define CHILD_CODE
#endif

struct plan {
    const rb_launch *l;
    const char *path;           /* PATH, for a program named without a '/' */
    int err;                    /* the child's errno when it could not start the program */
};

static char child_stack[64 * 1024] __attribute__((aligned(64)));

/* fd 'to' becomes 'from', inherited across exec (dup2 onto itself would keep close-on-exec). */
CHILD_CODE static int put_at(int from, int to) {
    if (from != to) return dup2(from, to) < 0 ? -1 : 0;
    int fl = fcntl(to, F_GETFD);
    return fl < 0 ? -1 : fcntl(to, F_SETFD, fl & ~FD_CLOEXEC);
}

CHILD_CODE static int setup_stdio(const rb_launch *l) {
    for (int i = 0; i < 3; i++) {
        int fd = l->stdio[i];
        if (fd == RB_STDIO_INHERIT) continue;
        if (fd == RB_STDIO_STDOUT) fd = 1;
        if (fd == RB_STDIO_NULL) {
            fd = open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY);
            if (fd < 0) return -1;
            if (fd == i) continue;
            if (dup2(fd, i) < 0) return -1;
            close(fd);
            continue;
        }
        if (put_at(fd, i) < 0) return -1;
    }
    return 0;
}

/* execve on each PATH entry in turn, as execvp does (without its fallback to sh for a file
 * without a #! line, as posix_spawnp). Returns only on failure, with errno set. */
CHILD_CODE static void exec_on_path(const char *file, const struct plan *p) {
    char *const *argv = (char *const *)p->l->argv;
    if (strchr(file, '/')) { execve(file, argv, p->l->envp); return; }
    const char *path = p->path ? p->path : "/bin:/usr/bin";
    size_t flen = strlen(file);
    char buf[PATH_MAX];
    int denied = 0;
    for (const char *s = path;; ) {
        const char *e = strchr(s, ':');
        size_t dlen = e ? (size_t)(e - s) : strlen(s);
        if (dlen + 1 + flen < sizeof buf) {
            size_t n = 0;
            if (dlen == 0) buf[n++] = '.';
            else { memcpy(buf, s, dlen); n = dlen; }
            buf[n++] = '/';
            memcpy(buf + n, file, flen + 1);
            execve(buf, argv, p->l->envp);
            if (errno == EACCES) denied = 1;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV && errno != ETIMEDOUT)
                return;
        }
        if (!e) break;
        s = e + 1;
    }
    errno = denied ? EACCES : ENOENT;
}

CHILD_CODE static int child(void *arg) {
    struct plan *p = arg;
    const rb_launch *l = p->l;
    static const int caught[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT};
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (size_t i = 0; i < sizeof caught / sizeof caught[0]; i++) sigaction(caught[i], &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    if (setpgid(0, 0) < 0 || setup_stdio(l) < 0 || (l->cwd && chdir(l->cwd) < 0)) goto fail;
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
        /* kernels before 5.9: every fd up to the limit */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 ? max : 1024); fd++) close((int)fd);
    }
    sigprocmask(SIG_SETMASK, &none, NULL);
    exec_on_path(l->argv[0], p);
fail:
    p->err = errno ? errno : ECHILD;
    _exit(127);
}

int rb_launch_start(const rb_launch *l, pid_t *pid, int *pidfd) {
    struct plan p = {.l = l, .path = getenv("PATH"), .err = 0};
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);      /* no handler of ours may run in the child */
    int fd = -1;
    char *top = child_stack + sizeof child_stack;
    pid_t c = clone(child, top, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &p, &fd);
    if (c < 0 && errno == EINVAL) {          /* a kernel without CLONE_PIDFD */
        fd = -1;
        c = clone(child, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &p);
    }
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (c < 0) return e;
    if (p.err) {
        if (fd >= 0) close(fd);
        while (waitpid(c, NULL, 0) < 0 && errno == EINTR) {}
        return p.err;
    }
    if (fd < 0) fd = (int)syscall(SYS_pidfd_open, c, 0);   /* -1 without pidfds: the exit is polled */
    *pid = c;
    *pidfd = fd;
    return 0;
}
