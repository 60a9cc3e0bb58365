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


/*
 * Sender: writes the be64 offsets of pages[0..n) (page numbers inside `b`) to `table` and copies the
 * first `normal` of those pages to `data` (normal * 4096 bytes). The remaining n - normal entries
 * are zero pages: listed, not copied. Returns 0, or MC_EINVAL for a page outside the block.
 */
int mf_fill_packet(mc_block *b, const uint64_t *pages, uint64_t n, uint64_t normal, uint8_t *table,
                   uint8_t *data);

/*
 * Receiver: `table` holds `n` be64 offsets as they came off the wire; the first `normal` have
 * their bytes in `data`, the rest are zero pages. Each offset must be page-aligned and below
 * `limit` (the block's used length). Normal pages are copied and marked in `received` (one byte
 * per page); a zero page is cleared only if it was received before (a never-received page is
 * still the kernel's zero page: touching it would only populate memory), then marked.
 * Returns 0, or -(17 + i) when offset i is bad (nothing at or after it is applied).
 */
int64_t mf_apply_packet(mc_block *b, uint64_t limit, const uint8_t *table, uint64_t n, uint64_t normal,
                        const uint8_t *data, uint8_t *received);

#endif
