/* A minimal TAP test harness for the C unit tests. */
#ifndef RUNBOX_CHECK_H
#define RUNBOX_CHECK_H
#include <stdio.h>

static int check_n, check_failed;

#define CHECK(cond) do { \
    check_n++; \
    if (cond) printf("ok %d - %s\n", check_n, #cond); \
    else { check_failed++; printf("not ok %d - %s (%s:%d)\n", check_n, #cond, __FILE__, __LINE__); } \
} while (0)

#define CHECK_DONE() (printf("1..%d\n", check_n), check_failed ? 1 : 0)

#endif
