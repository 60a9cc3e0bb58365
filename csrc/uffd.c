/* uffd: userfaultfd for postcopy's destination (open, register, faults, placement). See uffd.h. */
#define _GNU_SOURCE
#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <string.h>
#include <unistd.h>

#include "ram_flags.h"

_Static_assert(UF_FEATURE_THREAD_ID == UFFD_FEATURE_THREAD_ID, "UF_FEATURE_THREAD_ID is the kernel's value");
_Static_assert(sizeof(struct uffd_msg) == 32, "a uffd_msg is 32 bytes");

/* Retries of a placement that made no progress (EAGAIN/EINTR: the mm changing under it). */
#define UF_MAX_STALLS 1000

/* The ioctls a registered range must support for postcopy. */
#define UF_NEEDED_IOCTLS ((1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_ZEROPAGE) | (1ULL << _UFFDIO_WAKE))

/* A page-aligned, non-empty range that does not wrap. */
static int range_ok(uint64_t start, uint64_t len)
{
    return len > 0 && start % UF_PAGE_SIZE == 0 && len % UF_PAGE_SIZE == 0 && start + len > start;
}

/* A new userfaultfd without the API handshake: the syscall, else /dev/userfaultfd (a host that
 * refuses the syscall to unprivileged users may allow the device). The fd, or the syscall's
 * -errno (the device's when the kernel has no syscall). */
static int open_raw(void)
{
    int err = ENOSYS;
#ifdef __NR_userfaultfd
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        return fd;
    }
    err = errno;
#endif
#ifdef USERFAULTFD_IOC_NEW
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        int ufd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        int dev_err = errno;
        close(dev);
        if (ufd >= 0) {
            return ufd;
        }
        if (err == ENOSYS) {
            err = dev_err;
        }
    }
#endif
    return -err;
}

/* UFFDIO_API asking for `features`; *offered (may be NULL) = every feature the kernel has. */
static int api_handshake(int fd, uint64_t features, uint64_t *offered)
{
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        return -errno;
    }
    if (offered) {
        *offered = api.features;
    }
    return 0;
}

/* As QEMU: a first fd learns what the kernel offers (UFFDIO_API is allowed once per fd), a
 * second one asks for what is both wanted and offered. */
int uf_open(uint64_t wanted_features, uint64_t *got_features)
{
    uint64_t offered = 0;
    int fd = open_raw();
    if (fd < 0) {
        return fd;
    }
    int rc = api_handshake(fd, 0, &offered);
    close(fd);
    if (rc < 0) {
        return rc;
    }
    fd = open_raw();
    if (fd < 0) {
        return fd;
    }
    uint64_t ask = wanted_features & offered;
    rc = api_handshake(fd, ask, NULL);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    if (got_features) {
        *got_features = ask;
    }
    return fd;
}

/* MADV_NOHUGEPAGE first (a missing 4 KiB page must not be filled as part of a 2 MiB one; advice
 * only: a host without THP refuses it harmlessly), then UFFDIO_REGISTER in MISSING mode. */
int uf_register(int fd, uint64_t start, uint64_t len)
{
    if (!range_ok(start, len)) {
        return -EINVAL;
    }
#ifdef MADV_NOHUGEPAGE
    madvise((void *)(uintptr_t)start, len, MADV_NOHUGEPAGE);
#endif
    struct uffdio_register reg = {
        .range = { .start = start, .len = len },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        return -errno;
    }
    if ((reg.ioctls & UF_NEEDED_IOCTLS) != UF_NEEDED_IOCTLS) {
        uf_unregister(fd, start, len);
        return -ENOTSUP;
    }
    return 0;
}

/* UFFDIO_UNREGISTER of the range. */
int uf_unregister(int fd, uint64_t start, uint64_t len)
{
    if (!range_ok(start, len)) {
        return -EINVAL;
    }
    struct uffdio_range range = { .start = start, .len = len };
    return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

/* Reads events in batches until max faults are stored or none is pending. An error after some
 * faults were stored returns those (the next call reports it): a read fault must not be lost. */
int uf_read_faults(int fd, uint64_t *addrs, uint32_t *tids, int max)
{
    if (max < 0 || (max > 0 && (!addrs || !tids))) {
        return -EINVAL;
    }
    struct uffd_msg msgs[UF_READ_BATCH];
    int stored = 0;
    while (stored < max) {
        int want = max - stored < UF_READ_BATCH ? max - stored : UF_READ_BATCH;
        ssize_t n = read(fd, msgs, sizeof(msgs[0]) * (size_t)want);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return errno == EAGAIN || stored > 0 ? stored : -errno;
        }
        int got = (int)(n / (ssize_t)sizeof(msgs[0]));
        for (int i = 0; i < got; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
                continue;
            }
            addrs[stored] = msgs[i].arg.pagefault.address & ~(uint64_t)(UF_PAGE_SIZE - 1);
            tids[stored] = msgs[i].arg.pagefault.feat.ptid;
            stored++;
        }
        if (got < want) {
            break;
        }
    }
    return stored;
}

/* One UFFDIO_COPY (src) or UFFDIO_ZEROPAGE (src NULL): 0 or -errno; *done = the kernel's count
 * of bytes placed (negative: nothing was; untouched, so 0, when the call was refused outright). */
static int fill_once(int fd, uint64_t dst, const uint8_t *src, uint64_t len, int64_t *done)
{
    int rc;
    if (src) {
        struct uffdio_copy copy = { .dst = dst, .src = (uintptr_t)src, .len = len, .mode = 0, .copy = 0 };
        rc = ioctl(fd, UFFDIO_COPY, &copy);
        *done = copy.copy;
    } else {
        struct uffdio_zeropage zero = { .range = { .start = dst, .len = len }, .mode = 0, .zeropage = 0 };
        rc = ioctl(fd, UFFDIO_ZEROPAGE, &zero);
        *done = zero.zeropage;
    }
    return rc < 0 ? -errno : 0;
}

/* Places [dst, dst+len) page run by page run: a partial placement (EAGAIN with progress)
 * continues where it stopped; a present page (EEXIST) is skipped, its waiters woken in case
 * one faulted on it before it appeared; EAGAIN/EINTR without progress is retried a bounded
 * number of times. 0: all placed, 1: some page was present, else -errno. */
static int fill(int fd, uint64_t dst, const uint8_t *src, uint64_t len)
{
    if (!range_ok(dst, len)) {
        return -EINVAL;
    }
    int existed = 0, stalls = 0;
    uint64_t off = 0;
    while (off < len) {
        int64_t done = 0;
        int rc = fill_once(fd, dst + off, src ? src + off : NULL, len - off, &done);
        if (done > 0) {
            off += (uint64_t)done <= len - off ? (uint64_t)done : len - off;
            stalls = 0;
            continue;
        }
        if (rc == -EEXIST) {
            existed = 1;
            uf_wake(fd, dst + off, UF_PAGE_SIZE);
            off += UF_PAGE_SIZE;
        } else if ((rc == -EAGAIN || rc == -EINTR) && ++stalls <= UF_MAX_STALLS) {
            sched_yield();
        } else {
            return rc < 0 ? rc : -EIO;  /* rc 0 with nothing done: the kernel broke its contract */
        }
    }
    return existed;
}

/* UFFDIO_COPY of len bytes; see fill. */
int uf_place(int fd, uint64_t dst, const uint8_t *src, uint64_t len)
{
    if (!src) {
        return -EINVAL;
    }
    return fill(fd, dst, src, len);
}

/* UFFDIO_ZEROPAGE of len bytes; see fill. */
int uf_place_zero(int fd, uint64_t dst, uint64_t len)
{
    return fill(fd, dst, NULL, len);
}

/* UFFDIO_WAKE of the range. */
int uf_wake(int fd, uint64_t start, uint64_t len)
{
    if (!range_ok(start, len)) {
        return -EINVAL;
    }
    struct uffdio_range range = { .start = start, .len = len };
    return ioctl(fd, UFFDIO_WAKE, &range) < 0 ? -errno : 0;
}

/* MADV_DONTNEED of the range (private anonymous memory: the pages are gone, not written back). */
int uf_discard(uint64_t start, uint64_t len)
{
    if (len == 0) {
        return start % UF_PAGE_SIZE == 0 ? 0 : -EINVAL;
    }
    if (!range_ok(start, len)) {
        return -EINVAL;
    }
    return madvise((void *)(uintptr_t)start, len, MADV_DONTNEED) < 0 ? -errno : 0;
}

/* One record of a run: its offset and kind (ZERO with its fill byte, or PAGE), or 0 when the
 * bytes at `p` (`left` of them) are not a whole CONTINUE ZERO/PAGE record inside `used_len`. */
static int run_record(const uint8_t *p, uint64_t left, uint64_t used_len, uint64_t *off, uint64_t *size)
{
    if (left < 8) {
        return 0;
    }
    uint64_t word = 0;
    for (int i = 0; i < 8; i++) {
        word = word << 8 | p[i];
    }
    uint64_t flags = word & (UF_PAGE_SIZE - 1);
    *off = word & ~(uint64_t)(UF_PAGE_SIZE - 1);
    if (*off >= used_len) {
        return 0;
    }
    if (flags == (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE) && left >= 9) {
        *size = 9;
        return RAM_SAVE_FLAG_ZERO;
    }
    if (flags == (RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE) && left >= 8 + UF_PAGE_SIZE) {
        *size = 8 + UF_PAGE_SIZE;
        return RAM_SAVE_FLAG_PAGE;
    }
    return 0;
}

/* Places a run of CONTINUE ZERO/PAGE records of one block (postcopy: every page through the
 * userfaultfd, so a waiter wakes and nothing writes into a missing page). Stops before anything
 * else (a named record, EOS, a record cut by the end of `buf`, an offset past `used_len`) for the
 * caller's parser. Returns the bytes consumed, or -errno of a failed placement (the records
 * before it are placed); counts[0] += zero records, counts[1] += page records. */
int64_t uf_place_run(int fd, uint64_t host, uint64_t used_len, const uint8_t *buf, uint64_t len,
                     uint8_t *rmap, uint64_t rmap_len, uint64_t *counts)
{
    uint8_t filled[UF_PAGE_SIZE];
    uint64_t pos = 0, off = 0, size = 0;
    int kind;
    if (used_len > rmap_len * UF_PAGE_SIZE) {
        return -EINVAL;
    }
    while ((kind = run_record(buf + pos, len - pos, used_len, &off, &size)) != 0) {
        int ret;
        if (kind == RAM_SAVE_FLAG_PAGE) {
            ret = fill(fd, host + off, buf + pos + 8, UF_PAGE_SIZE);
        } else if (buf[pos + 8] == 0) {
            ret = fill(fd, host + off, NULL, UF_PAGE_SIZE);
        } else {
            memset(filled, buf[pos + 8], sizeof(filled));
            ret = fill(fd, host + off, filled, UF_PAGE_SIZE);
        }
        if (ret < 0) {
            return ret;
        }
        rmap[off / UF_PAGE_SIZE] = 1;
        counts[kind == RAM_SAVE_FLAG_PAGE]++;
        pos += size;
    }
    return (int64_t)pos;
}
