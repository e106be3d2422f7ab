/*
 * A guest-side LD_PRELOAD for bench/arm_icount.sh: getrandom(2) gives the
 * same bytes in every run, so hash-map seeds (Rust's RandomState) and
 * anything else the program draws are the same, and so is the instruction
 * count. qemu-user passes getrandom through to the host, and its -seed
 * option does not reach it. Both the libc function and the raw syscall
 * (through syscall(3)) are covered. Built with the board's cross gcc and
 * set with qemu's -E LD_PRELOAD=..., so only the guest loads it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/types.h>

static unsigned long long state = 0x9e3779b97f4a7c15ull;

static void fill(void *buf, size_t len)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (unsigned char)(state >> 56);
    }
}

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
    (void)flags;
    fill(buf, len);
    return (ssize_t)len;
}

int getentropy(void *buf, size_t len)
{
    fill(buf, len);
    return 0;
}

long syscall(long number, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_getrandom) {
        fill((void *)a[0], (size_t)a[1]);
        return a[1];
    }
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
