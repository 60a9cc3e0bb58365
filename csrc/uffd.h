/*
 * uffd: userfaultfd for the destination of a postcopy migration (QEMU's postcopy-ram.c).
 *
 * Guest RAM is registered in MISSING mode: a thread touching a page nobody has placed yet blocks
 * in the kernel and a fault event is queued on the userfaultfd. The fault thread reads those
 * events (uf_read_faults) and asks the source for the pages; the loading thread places each page
 * atomically (uf_place: UFFDIO_COPY, uf_place_zero: UFFDIO_ZEROPAGE), which wakes the waiters.
 * A plain memcpy into a missing registered page would fault on it and block its own writer, so
 * placement always goes through these ioctls.
 *
 * Addresses are host virtual addresses, lengths bytes; both must be multiples of UF_PAGE_SIZE
 * and a range must not wrap. Every function returns a negated errno on failure (-EINVAL for a
 * bad argument), never aborts. The Python binding releases the GIL around every call.
 */
#ifndef UFFD_H
#define UFFD_H

#include <stdint.h>

/* The page size userfaultfd works in (the host's base page). */
#define UF_PAGE_SIZE 4096
/* UFFD_FEATURE_THREAD_ID: fault events carry the faulting thread's id. */
#define UF_FEATURE_THREAD_ID 256
/* Most fault events uf_read_faults reads per read(2) call. */
#define UF_READ_BATCH 64

/* Opens a non-blocking, close-on-exec userfaultfd (the userfaultfd syscall, else
 * /dev/userfaultfd) and does the UFFDIO_API handshake asking for the features of wanted_features
 * the kernel offers. Returns the fd, *got_features (may be NULL) = the features granted. */
int uf_open(uint64_t wanted_features, uint64_t *got_features);
/* Registers [start, start+len) in MISSING mode (after MADV_NOHUGEPAGE on it); -ENOTSUP (and
 * nothing registered) when the range does not support UFFDIO_COPY and UFFDIO_ZEROPAGE. */
int uf_register(int fd, uint64_t start, uint64_t len);
/* Unregisters [start, start+len); threads waiting on a page there are woken. */
int uf_unregister(int fd, uint64_t start, uint64_t len);
/* Stores up to max pending page faults without blocking: addrs[i] the faulting page (rounded
 * down to UF_PAGE_SIZE), tids[i] the faulting thread (0 without UF_FEATURE_THREAD_ID). Other
 * events are dropped. Returns how many were stored (0: none pending). */
int uf_read_faults(int fd, uint64_t *addrs, uint32_t *tids, int max);
/* Places len bytes of src at dst (UFFDIO_COPY, waking the waiters), retrying partial copies.
 * 0: every page placed; 1: some page was already present (left as it was, the others placed). */
int uf_place(int fd, uint64_t dst, const uint8_t *src, uint64_t len);
/* The same with zero pages (UFFDIO_ZEROPAGE). */
int uf_place_zero(int fd, uint64_t dst, uint64_t len);
/* Wakes the threads waiting on a page of [start, start+len) (UFFDIO_WAKE). */
int uf_wake(int fd, uint64_t start, uint64_t len);
/* Drops the pages of [start, start+len) (MADV_DONTNEED): registered, they are missing again;
 * len 0 does nothing. */
int uf_discard(uint64_t start, uint64_t len);
/* Postcopy's fast path: a run of CONTINUE ZERO/PAGE records of one block placed page by page
 * through the userfaultfd (see uffd.c); bytes consumed or -errno. */
int64_t uf_place_run(int fd, uint64_t host, uint64_t used_len, const uint8_t *buf, uint64_t len,
                     uint8_t *rmap, uint64_t rmap_len, uint64_t *counts);

#endif
