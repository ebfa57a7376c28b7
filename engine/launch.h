/* Starting a program: what posix_spawnp does for runbox, minus the costs it pays on every call (a
 * stack mapped and unmapped, file actions allocated, the fd limit looked up per action) and plus
 * the pidfd from the clone itself. The child runs in its own process group with the given stdio,
 * working folder and environment, signals at their defaults and unblocked, other fds closed. */
#ifndef RUNBOX_LAUNCH_H
#define RUNBOX_LAUNCH_H
#include <sys/types.h>

#define RB_STDIO_NULL (-1)      /* /dev/null */
#define RB_STDIO_INHERIT (-2)   /* runbox's own */
#define RB_STDIO_STDOUT (-3)    /* stderr only: wherever stdout goes */

typedef struct {
    const char *const *argv;    /* argv[0] is searched on PATH unless it has a '/' */
    char *const *envp;
    const char *cwd;            /* NULL: runbox's */
    int stdio[3];               /* an fd (3 or above) for 0, 1, 2, or one of RB_STDIO_* */
} rb_launch;

/* Returns 0 with *pid and *pidfd (-1 when the kernel offers none), or the errno of the failure,
 * the child's own when it could not start the program (the child is reaped then). */
int rb_launch_start(const rb_launch *l, pid_t *pid, int *pidfd);

#endif
