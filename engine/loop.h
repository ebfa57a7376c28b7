/* The event loop: one epoll set, a timer heap, signals and a queue of ready ids.
 *
 * Everything that can be waited for is named by an id. Lua coroutines park on ids (the scheduler in
 * lua/runbox/sched.lua maps ids to coroutines); C modules mark ids ready with rb_notify. libcurl and
 * other C users may instead register callbacks on fds and timers. */
#ifndef RUNBOX_LOOP_H
#define RUNBOX_LOOP_H
#include <stdint.h>
#include <lua.h>

typedef uint64_t rb_id;

typedef void (*rb_fd_cb)(int fd, uint32_t epoll_events, void *ud);
typedef void (*rb_timer_cb)(void *ud);

/* A timer handle: the slot in the timer table plus the id that it notifies. */
typedef struct { int32_t slot; rb_id id; } rb_timer;

int rb_loop_init(void);
void rb_loop_free(void);
double rb_now(void);                 /* monotonic seconds */

rb_id rb_new_id(void);
void rb_notify(rb_id id);            /* ready at the next poll */

/* One-shot readiness wait of a Lua waiter: id is notified once fd is readable (dir 'r') or writable
 * ('w'), or on error/hang-up. Returns 0 on success, -1 with errno. */
int rb_watch_fd(int fd, char dir, rb_id id);
void rb_unwatch_fd(int fd, char dir, rb_id id);   /* id 0: whatever watch it has */
void rb_forget_fd(int fd);           /* call before close(fd) */

/* Persistent callback watch (libcurl). events is EPOLLIN|EPOLLOUT, or 0 to remove. */
int rb_fd_callback(int fd, uint32_t events, rb_fd_cb cb, void *ud);

rb_timer rb_timer_start(double delay, rb_id id, rb_timer_cb cb, void *ud);
void rb_timer_stop(rb_timer t);

/* Waits up to timeout seconds (<0: until something happens). Ready ids are appended to *ids (the
 * array is owned by the loop, valid until the next call); received signal numbers to *sigs. */
int rb_poll(double timeout, const rb_id **ids, int *nids, const int **sigs, int *nsigs);

/* SIGINT, SIGTERM and SIGHUP become events: rb_poll reports them. rb_take_signal consumes a
 * pending arrival of sig before the loop reports it (the REPL checks for Ctrl-C from a hook while
 * a line runs without ever blocking); returns 1 if there was one. */
int rb_take_signal(int sig);

int luaopen_runbox_c_loop(lua_State *L);

#endif
