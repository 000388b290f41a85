/* A wall clock a test can step, for one process: built by tests/test_clock.py and loaded into a
 * `katilim` subprocess with LD_PRELOAD, it adds the number of seconds written in the file named by
 * KATILIM_TEST_CLOCK_FILE (e.g. "-3600") to CLOCK_REALTIME: clock_gettime(CLOCK_REALTIME*),
 * gettimeofday() and time(). CLOCK_MONOTONIC is left alone, as when an administrator or NTP steps
 * the real clock of the machine. The file is read again at most every 20 ms. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ns;        /* the step, in nanoseconds */
static long long read_at_ns = -1;  /* monotonic time of the last read of the file */

static long long ns_of(const struct timespec *ts) {
    return (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static long long current_offset(void) {
    const char *path = getenv("KATILIM_TEST_CLOCK_FILE");
    struct timespec mono;
    if (path == NULL || real_clock_gettime(CLOCK_MONOTONIC, &mono) != 0) {
        return 0;
    }
    long long now = ns_of(&mono);
    long long last = __atomic_load_n(&read_at_ns, __ATOMIC_RELAXED);
    if (last < 0 || now - last > 20000000LL) {
        FILE *file = fopen(path, "r");
        double seconds;
        if (file != NULL) {
            if (fscanf(file, "%lf", &seconds) == 1) {
                __atomic_store_n(&offset_ns, (long long)(seconds * 1e9), __ATOMIC_RELAXED);
            }
            fclose(file);
        }
        __atomic_store_n(&read_at_ns, now, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (real_clock_gettime == NULL) {
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    }
    int result = real_clock_gettime(clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long shifted = ns_of(ts) + current_offset();
        ts->tv_sec = shifted / 1000000000LL;
        ts->tv_nsec = shifted % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return -1;
    }
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
