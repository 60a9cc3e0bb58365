/*
 * xbzrle: the source side of QEMU's XBZRLE (migration/xbzrle.c, page_cache.c, ram.c).
 *
 * A direct-mapped page cache keyed by ram_addr (QEMU's page_cache.c rules), QEMU's delta encoder
 * (byte-identical output, same overflow limit), and a run encoder that turns dirty pages of one
 * block into RAM section records the way ram_save_target_page does once XBZRLE has started:
 * ZERO, else XBZRLE against the cached copy (identical pages are skipped), else PAGE.
 * Every function bounds-checks its arguments: a bad one is an error code, never a host crash.
 */
#ifndef XBZRLE_H
#define XBZRLE_H

#include <stddef.h>
#include <stdint.h>

#include "memcore.h"

/* Largest record for one non-zero page, without the block name: be64 + u8 + be16 + 4096. */
#define XB_RECORD_MAX 4107
/* A ZERO record with CONTINUE: be64 + fill byte. */
#define XB_ZERO_RECORD 9
/* page_cache.c: an entry is not replaced by another address for two generations. */
#define XB_CACHED_PAGE_LIFETIME 2

typedef struct xb_cache xb_cache;

/* Counters of xb_encode_run (it only adds to them). The first five are QEMU's xbzrle_counters. */
typedef struct {
    uint64_t pages;        /* cache hits: XBZRLE sent, skipped (identical) or overflowed */
    uint64_t bytes;        /* QEMU's xbzrle bytes: per XBZRLE record encoded_len + 3 (+ 1 + name
                              length if named); per overflow 4096 */
    uint64_t cache_miss;   /* pages not in the cache (miss: sent as PAGE) */
    uint64_t overflow;     /* hits whose delta did not fit in 4096 bytes (sent as PAGE) */
    uint64_t encoded;      /* sum of encoded_len over XBZRLE records */
    uint64_t xbzrle;       /* XBZRLE records written */
    uint64_t skipped;      /* identical pages: nothing written */
    uint64_t normal;       /* PAGE records written */
    uint64_t zero;         /* ZERO records written */
    uint64_t transferred;  /* all bytes written */
} xb_stats;

/* A cache of size_bytes / 4096 slots; NULL unless that is a power of two >= 1 (or out of memory).
 * Slot data is allocated lazily by the kernel (untouched slots cost no memory). */
xb_cache *xb_cache_new(uint64_t size_bytes);
void xb_cache_free(xb_cache *c);
uint64_t xb_cache_slots(xb_cache *c);

/* page_cache.c semantics. key: the page's ram_addr (page-aligned); slot = (key / 4096) & (slots - 1).
 * is_cached: 1 if the slot holds key (and refreshes its age to generation), else 0.
 * insert: copies 4096 bytes; refused (-1) if the slot holds another key whose
 * age + XB_CACHED_PAGE_LIFETIME > generation; else 0 and the age becomes generation. */
int xb_cache_is_cached(xb_cache *c, uint64_t key, uint64_t generation);
int xb_cache_insert(xb_cache *c, uint64_t key, const uint8_t *data, uint64_t generation);
/* Inspection without side effects: 1 and the page (data may be NULL) and age if key is cached, else 0. */
int xb_cache_peek(xb_cache *c, uint64_t key, uint8_t *data, uint64_t *age);

/* QEMU's xbzrle_encode_buffer for one 4096-byte page into dst (4096 bytes): the encoded length,
 * 0 if the pages are identical, -1 on overflow (QEMU's limit, see xbzrle.c). */
int xb_encode_page(const uint8_t *old_page, const uint8_t *new_page, uint8_t *dst);

/* One call of xb_encode_run: what to encode, how, and where to. */
typedef struct {
    mc_block *block;
    uint64_t key_base;       /* the block's ram_addr: a page's cache key is key_base + its offset */
    uint64_t page, npages;   /* the pages [page, page+npages) of block, in order */
    const uint8_t *zero_map; /* npages bytes, non-zero = an all-zero page */
    const uint8_t *name;     /* the block name (name_len <= 255), if it may be pending */
    uint64_t name_len;
    int name_pending;        /* in: the next record written must carry the name; out: 0 once one was */
    int started;             /* XBZRLE active: past the first complete round */
    int last_stage;          /* the completion stage: the cache is no longer updated */
    uint64_t generation;     /* QEMU's dirty_sync_count */
    uint8_t *out;            /* cap bytes for the records */
    uint64_t cap;
} xb_run;

/*
 * Encodes pages [page, page+npages) of run->block, in order, as RAM section records into run->out:
 *  - zero_map[i] != 0: ZERO record (fill 0); if started, zeros are inserted for its key.
 *  - else if started, key = key_base + offset:
 *      miss: cache_miss; unless last_stage the page is inserted and the PAGE record is sent from
 *            the cached copy (what is sent is what is cached); refused or last stage: from RAM.
 *      hit:  pages; the page is snapshotted, then encoded against the cached copy:
 *            identical: skipped, nothing written;
 *            overflow:  overflow, bytes += 4096, PAGE record with the snapshot;
 *            else:      XBZRLE record (u8 1, be16 len, delta);
 *            unless last_stage (or skipped) the cache copy becomes the snapshot.
 *  - else: PAGE record with the page's bytes (as mc_ram_encode_run).
 * The first record written carries the block name if run->name_pending (which then becomes 0; a
 * skipped page writes nothing); the others CONTINUE. cap must be at least the worst case: per zero
 * page XB_ZERO_RECORD, per other page XB_RECORD_MAX (8 + 4096 unless started), plus 1 + name_len if
 * the name is pending. c may be NULL unless started. stats (may be NULL) is added to.
 * Returns the bytes written, or MC_EINVAL (nothing changed, run->name_pending included).
 */
int64_t xb_encode_run(xb_cache *c, xb_run *run, xb_stats *stats);

#endif
