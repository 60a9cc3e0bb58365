/*
 * multifd: the page work of QEMU's multifd channels (migration/multifd.c, multifd-nocomp.c).
 *
 * A multifd data packet carries a fixed table of be64 block offsets (normal pages first, then
 * zero pages) and the normal pages' bytes. The sender fills the table and gathers the pages from
 * guest RAM in one call; the receiver scatters a packet's pages into RAM and clears its zero pages
 * in one call. Offsets from the wire are checked against the block's used length and alignment:
 * a bad one is an error code, never a stray write.
 */
#ifndef MULTIFD_H
#define MULTIFD_H

#include <stddef.h>
#include <stdint.h>

#include "memcore.h"

/* Pages per packet (MULTIFD_PACKET_SIZE / 4 KiB): the most a packet may carry. */
#define MF_MAX_PAGES 128
/* Offset i of a packet's table is bad: -(MF_BADOFF_BASE + i), clear of the negated errno values. */
#define MF_BADOFF_BASE 1048576

/*
 * Sender: writes the be64 offsets of pages[0..n) (page numbers inside `b`) to `table` and copies the
 * first `normal` of those pages to `data` (normal * 4096 bytes; data may be NULL: table only). The
 * remaining n - normal entries are zero pages: listed, not copied. Returns 0, or MC_EINVAL for a page
 * outside the block.
 */
int mf_fill_packet(mc_block *b, const uint64_t *pages, uint64_t n, uint64_t normal, uint8_t *table,
                   uint8_t *data);

/*
 * Receiver: `table` holds `n` be64 offsets as they came off the wire; the first `normal` have
 * their bytes in `data`, the rest are zero pages. Each offset must be page-aligned and below
 * `limit` (the block's used length). Normal pages are copied and marked in `received` (one byte
 * per page); a zero page is cleared only if it was received before (a never-received page is
 * still the kernel's zero page: touching it would only populate memory), then marked.
 * Returns 0, or -(MF_BADOFF_BASE + i) when offset i is bad (nothing at or after it is applied).
 */
int64_t mf_apply_packet(mc_block *b, uint64_t limit, const uint8_t *table, uint64_t n, uint64_t normal,
                        const uint8_t *data, uint8_t *received);

/*
 * Sender, uncompressed: writes hdr (hdr_len bytes) and then the first `normal` pages of pages[]
 * straight from guest memory (writev, no copy), waiting with poll() while fd is full. Returns 0,
 * -ECANCELED once wake_fd is readable, a negated errno, or MC_EINVAL (a page outside the block).
 */
int64_t mf_send_packet(mc_block *b, const uint64_t *pages, uint64_t normal, const uint8_t *hdr,
                       uint64_t hdr_len, int fd, int wake_fd);

/*
 * Receiver, uncompressed: checks all `n` be64 offsets of `table` (as mf_apply_packet does; -(MF_BADOFF_BASE + i)
 * for a bad one, before anything is read or written), reads the `normal` pages from fd straight
 * into guest memory (readv), then clears/marks the zero entries and marks the received pages.
 * Returns 0, -EPIPE at end of stream, -ECANCELED once wake_fd is readable, or a negated errno.
 */
int64_t mf_recv_packet(mc_block *b, uint64_t limit, const uint8_t *table, uint64_t n, uint64_t normal,
                       int fd, int wake_fd, uint8_t *received);

#endif
