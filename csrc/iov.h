/*
 * iov: complete writev/readv on a (possibly non-blocking) fd, for the C core's channel I/O.
 * Internal to csrc/ (not part of the Python binding). A full fd is waited for with poll(); the
 * wait ends early with -ECANCELED once wake_fd (the channel's shutdown pipe, or -1) is readable.
 */
#ifndef IOV_H
#define IOV_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

/* Waits until fd is ready for `events`; 0, -ECANCELED (wake_fd readable) or -errno. */
static inline int64_t iov_wait(int fd, short events, int wake_fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = wake_fd, .events = POLLIN}};
    if (poll(p, wake_fd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR) {
        return -errno;
    }
    if (wake_fd >= 0 && (p[1].revents & POLLIN)) {
        return -ECANCELED;
    }
    return 0;
}

/* Moves past k transferred bytes of iov[0..*n). */
static inline struct iovec *iov_advance(struct iovec *iov, int *n, size_t k)
{
    while (*n > 0 && k >= iov->iov_len) {
        k -= iov->iov_len;
        iov++;
        (*n)--;
    }
    if (*n > 0) {
        iov->iov_base = (uint8_t *)iov->iov_base + k;
        iov->iov_len -= k;
    }
    return iov;
}

/* Moves all of iov[0..n) through fd, reading (readv) or writing (writev): 0, a negated errno, or
 * when reading -EPIPE at end of stream first. */
static inline int64_t iov_move_all(int fd, int wake_fd, struct iovec *iov, int n, int reading)
{
    while (n > 0) {
        ssize_t k = reading ? readv(fd, iov, n) : writev(fd, iov, n);
        if (k == 0 && reading) {
            return -EPIPE;
        }
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                return -errno;
            }
            int64_t r = iov_wait(fd, reading ? POLLIN : POLLOUT, wake_fd);
            if (r < 0) {
                return r;
            }
            continue;
        }
        iov = iov_advance(iov, &n, (size_t)k);
    }
    return 0;
}

/* Writes iov[0..n) completely: 0 or a negated errno. */
static inline int64_t writev_all(int fd, int wake_fd, struct iovec *iov, int n)
{
    return iov_move_all(fd, wake_fd, iov, n, 0);
}

/* Fills iov[0..n) completely: 0, -EPIPE at end of stream first, or a negated errno. */
static inline int64_t readv_all(int fd, int wake_fd, struct iovec *iov, int n)
{
    return iov_move_all(fd, wake_fd, iov, n, 1);
}

#endif
