/* Unit tests of the event loop: timer heap order and cancellation, the ready queue, fd readiness. */
#include "check.h"
#include "loop.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int poll_once(double timeout, rb_id *out, int max) {
    const rb_id *ids; const int *sigs; int n, ns;
    if (rb_poll(timeout, &ids, &n, &sigs, &ns) < 0) return -1;
    for (int i = 0; i < n && i < max; i++) out[i] = ids[i];
    return n;
}

static void test_timers_fire_in_deadline_order(void) {
    rb_id got[64]; int total = 0;
    double delays[] = {0.03, 0.01, 0.02, 0.0, 0.025};
    rb_id ids[5];
    for (int i = 0; i < 5; i++) { ids[i] = rb_new_id(); rb_timer_start(delays[i], ids[i], NULL, NULL); }
    double t0 = rb_now();
    while (total < 5 && rb_now() - t0 < 1) total += poll_once(0.1, got + total, 64 - total);
    CHECK(total == 5);
    CHECK(got[0] == ids[3] && got[1] == ids[1] && got[2] == ids[2] && got[3] == ids[4] && got[4] == ids[0]);
}

static void test_stopped_timers_never_fire(void) {
    rb_timer keep[100], drop[100];
    for (int i = 0; i < 100; i++) {
        keep[i] = rb_timer_start(0.001 * (i % 7), rb_new_id(), NULL, NULL);
        drop[i] = rb_timer_start(0.001 * (i % 5), rb_new_id(), NULL, NULL);
    }
    for (int i = 0; i < 100; i++) rb_timer_stop(drop[i]);
    rb_timer_stop(drop[0]);    /* twice is harmless */
    rb_id got[256]; int total = 0;
    double t0 = rb_now();
    while (total < 100 && rb_now() - t0 < 1) total += poll_once(0.05, got + total, 256 - total);
    int stray = 0;
    for (int i = 0; i < total; i++)
        for (int j = 0; j < 100; j++) if (got[i] == drop[j].id) stray++;
    CHECK(total == 100);
    CHECK(stray == 0);
    (void)keep;
}

static void test_notify_is_delivered_without_waiting(void) {
    rb_id id = rb_new_id();
    rb_notify(id);
    rb_id got[4];
    double t0 = rb_now();
    int n = poll_once(5, got, 4);
    CHECK(n == 1 && got[0] == id);
    CHECK(rb_now() - t0 < 0.5);
}

static void test_fd_readiness(void) {
    int p[2];
    CHECK(pipe(p) == 0);
    rb_id rid = rb_new_id();
    CHECK(rb_watch_fd(p[0], 'r', rid) == 0);
    rb_id got[4];
    CHECK(poll_once(0.01, got, 4) == 0);        /* nothing to read yet */
    CHECK(write(p[1], "x", 1) == 1);
    int n = poll_once(1, got, 4);
    CHECK(n == 1 && got[0] == rid);
    CHECK(poll_once(0.01, got, 4) == 0);        /* one-shot: not delivered again */
    rb_id wid = rb_new_id();
    CHECK(rb_watch_fd(p[1], 'w', wid) == 0);
    n = poll_once(1, got, 4);
    CHECK(n == 1 && got[0] == wid);
    rb_id gone = rb_new_id();
    rb_watch_fd(p[0], 'r', gone);
    rb_forget_fd(p[0]);                          /* the waiter wakes and finds the fd gone */
    n = poll_once(0, got, 4);
    CHECK(n == 1 && got[0] == gone);
    close(p[0]); close(p[1]);
}

static int callback_hits;
static void on_timer(void *ud) { callback_hits += *(int *)ud; }

static void test_timer_callbacks(void) {
    int one = 1;
    rb_timer_start(0, 0, on_timer, &one);
    rb_timer t = rb_timer_start(0, 0, on_timer, &one);
    rb_timer_stop(t);
    rb_id got[4];
    poll_once(0.01, got, 4);
    CHECK(callback_hits == 1);
}

int main(void) {
    if (rb_loop_init() != 0) { printf("not ok - loop init\n"); return 1; }
    test_timers_fire_in_deadline_order();
    test_stopped_timers_never_fire();
    test_notify_is_delivered_without_waiting();
    test_fd_readiness();
    test_timer_callbacks();
    rb_loop_free();
    return CHECK_DONE();
}
