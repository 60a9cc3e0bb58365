/*
 * memcore: the C core of the emulator's memory.
 *
 * Guest RAM blocks live in anonymous mmap memory (populated lazily by the kernel); each block has a
 * dirty bitmap with one bit per 4 KiB page that every write path sets. A flat view is a sorted table
 * of non-overlapping ranges that maps guest-physical addresses to RAM/ROM blocks or to MMIO handles;
 * bulk read/write/fill resolve RAM in C and stop at the first MMIO byte so the caller can dispatch it.
 *
 * Every function bounds-checks its arguments: a bad address or length is an error code, never a
 * host crash. The Python binding releases the GIL around every call.
 */
#ifndef MEMCORE_H
#define MEMCORE_H

#include <stddef.h>
#include <stdint.h>

#define MC_PAGE_BITS 12
#define MC_PAGE_SIZE 4096ULL

/* Error codes (negative return values). */
#define MC_EINVAL (-1)   /* bad argument: out of range, misaligned, overflow */
#define MC_ENOMEM (-2)   /* allocation failed */

/* Range kinds in a flat view. */
#define MC_KIND_RAM 1    /* read/write host memory, marks dirty pages */
#define MC_KIND_ROM 2    /* readable host memory; writes are dropped */
#define MC_KIND_MMIO 3   /* handled by the caller: the access stops there */

typedef struct mc_block mc_block;
typedef struct mc_flat mc_flat;

/* One range of a flat view. `last` is inclusive so a range may end at 2^64 - 1. */
typedef struct {
    uint64_t start;
    uint64_t last;
    int32_t kind;
    int32_t handle;      /* caller's id for MMIO ranges (and informational for RAM/ROM) */
    mc_block *block;     /* RAM/ROM: backing block */
    uint64_t offset;     /* RAM/ROM: offset of `start` inside the block */
} mc_range;

/* ---- RAM blocks ---- */
mc_block *mc_block_new(uint64_t size);            /* NULL on failure; size rounded up to a page */
void mc_block_free(mc_block *b);
uint8_t *mc_block_host(mc_block *b);
uint64_t mc_block_size(mc_block *b);
uint64_t mc_block_pages(mc_block *b);
uint64_t *mc_block_bitmap(mc_block *b);           /* ceil(pages / 64) words */
uint64_t mc_block_bitmap_words(mc_block *b);

/* Copies/fills within one block by offset (bounds-checked). Writes mark dirty pages. */
int mc_block_read(mc_block *b, uint64_t off, uint8_t *buf, uint64_t len);
int mc_block_write(mc_block *b, uint64_t off, const uint8_t *buf, uint64_t len);
int mc_block_fill(mc_block *b, uint64_t off, uint8_t byte, uint64_t len);

/* Dirty bitmap helpers. */
int mc_dirty_set(mc_block *b, uint64_t off, uint64_t len);       /* mark bytes [off, off+len) */
int mc_dirty_set_all(mc_block *b);
uint64_t mc_dirty_count(mc_block *b);
int64_t mc_dirty_find_next(mc_block *b, uint64_t page);          /* first dirty page >= page, -1 if none */
int mc_dirty_test(mc_block *b, uint64_t page);
/* ORs npages bits of bits (bit i: page first + i) into the bitmap (a KVM dirty log merged in).
 * Returns the number of pages set in bits, or MC_EINVAL when the pages pass the block's end. */
int64_t mc_dirty_merge(mc_block *b, uint64_t first, const uint64_t *bits, uint64_t npages);                   /* 0/1, MC_EINVAL past the end */
/* Atomically moves the bitmap into `out` (nwords words, must equal the bitmap size) and clears it.
 * Returns the number of dirty pages moved, or MC_EINVAL. */
int64_t mc_dirty_fetch_clear(mc_block *b, uint64_t *out, uint64_t nwords);

/* Pages of the block that the kernel has populated (mincore); -1 on failure. */
int64_t mc_block_populated(mc_block *b);
/* Gives pages [page, page+npages) back to the kernel so they read as zero again. */
int mc_block_discard(mc_block *b, uint64_t page, uint64_t npages);

/* Zero detection. */
int mc_is_zero(const uint8_t *p, uint64_t len);
/* For pages [page, page+npages) of b, writes out[i] = 1 if page is all zero else 0. */
int mc_zero_pages(mc_block *b, uint64_t page, uint64_t npages, uint8_t *out);
/* The same, using /proc/self/pagemap (an open fd, or -1) to answer for never-populated pages
 * without reading them; scratch: npages words. */
int mc_zero_pages_pm(mc_block *b, uint64_t page, uint64_t npages, int pagemap_fd, uint64_t *scratch, uint8_t *out);

/* ---- migration: loading runs of RAM page records ---- */
/* Applies, from buf[0..len), consecutive records of QEMU's RAM section that continue the current
 * block: a big-endian u64 (page offset | flags) with flags exactly ZERO|CONTINUE (then one fill
 * byte) or PAGE|CONTINUE (then 4096 bytes), offset inside the block. Stops before the first record
 * that is anything else, out of range, or not complete in buf (the caller's parser handles it, with
 * its exact errors). A zero fill on a page that is already zero is not written, as QEMU 7.2.
 * rmap (one byte per page, rmap_len bytes) gets 1 for each page received.
 * counts[0] += zero records, counts[1] += page records. Returns the bytes consumed. */
uint64_t mc_ram_load_run(mc_block *b, const uint8_t *buf, uint64_t len, uint8_t *rmap, uint64_t rmap_len,
                         int pagemap_fd, uint64_t *counts);

/* Writes the records mc_ram_encode_run would encode for pages [page, page+npages) straight from
 * guest memory to fd with writev (no copy), waiting with poll() while a non-blocking fd is full.
 * Returns the bytes written (the whole run), -ECANCELED (negated errno value) when wake_fd becomes
 * readable, another negated errno, or MC_EINVAL for a bad range. */
int64_t mc_ram_send_run(mc_block *b, uint64_t page, uint64_t npages, const uint8_t *zero_map,
                        const uint8_t *name, uint64_t name_len, int fd, int wake_fd);

/* Encodes RAM records for pages [page, page+npages) of b into out (cap bytes: at least 9 per
 * zero page, 4104 per other page, plus 1 + name_len): ZERO records (fill 0) where zero_map[i],
 * else PAGE records with the page's bytes. The first record names the block when name is given;
 * all others CONTINUE. Returns the bytes written, or MC_EINVAL. */
int64_t mc_ram_encode_run(mc_block *b, uint64_t page, uint64_t npages, const uint8_t *zero_map,
                          const uint8_t *name, uint64_t name_len, uint8_t *out, uint64_t cap);

/* ---- flat views ---- */
mc_flat *mc_flat_new(void);
void mc_flat_free(mc_flat *f);
/* Replaces the table. Ranges must be sorted, non-overlapping, with valid blocks and offsets. */
int mc_flat_set(mc_flat *f, const mc_range *ranges, uint64_t n);
/* Frees the tables earlier mc_flat_set calls replaced. Only when no reader outside the caller's
 * own serialisation can still be walking one (no vCPU inside a hook). */
void mc_flat_reclaim(mc_flat *f);
/* How many replaced tables are waiting for mc_flat_reclaim. */
uint64_t mc_flat_retired(mc_flat *f);
uint64_t mc_flat_count(mc_flat *f);
/* Index of the range holding addr, or -1 (unassigned). */
int64_t mc_flat_lookup(mc_flat *f, uint64_t addr);

/*
 * Bulk access through a flat view. They process [addr, addr+len) in order: RAM/ROM are copied,
 * unassigned bytes read as zero and swallow writes, ROM swallows writes. They stop at the first
 * byte that falls in an MMIO range and return how many bytes were done before it, with *mmio set
 * to that range's index (or -1 if the whole access was done). Addresses wrap from 2^64 - 1 to 0.
 */
int64_t mc_as_read(mc_flat *f, uint64_t addr, uint8_t *buf, uint64_t len, int64_t *mmio);
int64_t mc_as_write(mc_flat *f, uint64_t addr, const uint8_t *buf, uint64_t len, int64_t *mmio);
int64_t mc_as_fill(mc_flat *f, uint64_t addr, uint8_t byte, uint64_t len, int64_t *mmio);

/* ---- codecs for the qtest wire (per-byte work kept out of Python) ---- */
/* GLib's g_base64_decode semantics: characters outside the alphabet are skipped, '=' counts as a
 * zero digit that suppresses output bytes of its quantum, an incomplete last quantum is dropped.
 * out needs (inlen / 4) * 3 + 3 bytes. Returns the number of bytes written. */
uint64_t mc_glib_b64_decode(const char *in, uint64_t inlen, uint8_t *out);

/* The same decoder, resumable across chunks of one argument. Start from a zeroed state; bytes
 * are written to out[] while below outcap, but all are counted. Returns (and keeps) the total. */
typedef struct {
    uint32_t v;
    int32_t n;
    uint8_t last0, last1;
    uint64_t total;
} mc_b64_state;
uint64_t mc_glib_b64_decode_step(mc_b64_state *st, const char *in, uint64_t inlen, uint8_t *out, uint64_t outcap);
/* qtest `write` decoding: byte i from chars 2+2i and 3+2i when both exist (invalid hex = nibble -1,
 * i.e. all bits set), bytes without data are zero. Writes exactly len bytes to out. */
void mc_qtest_hex_decode(const char *data, uint64_t datalen, uint8_t *out, uint64_t len);

/* Marks the RAM pages of [addr, addr+len) dirty (bytes outside RAM are ignored). */
void mc_as_mark_dirty(mc_flat *f, uint64_t addr, uint64_t len);

/* A Unicorn UC_HOOK_MEM_WRITE callback (uc_cb_hookmem_t) whose user_data is an mc_flat *: every
 * guest store marks its page(s) dirty, without entering Python. */
void mc_uc_write_hook(void *uc, int type, uint64_t address, int size, int64_t value, void *user_data);

/* Exact vCPU stops. Unicorn's asynchronous stops (emu_stop from another thread, timeouts) can land
 * in the middle of an instruction that then runs again (a read-modify-write executes twice); a
 * stop requested from a block hook takes effect at the block's start. mc_uc_block_hook is that
 * hook (uc_cb_hookcode_t); its user_data is an mc_uc_ctl. */
typedef struct {
    volatile int32_t stop;     /* set by whoever wants the vCPU to return from emu_start */
    volatile int32_t want_if;  /* an interrupt is pending: return as soon as EFLAGS.IF is set */
    int32_t eflags_reg;        /* Unicorn's register id of EFLAGS */
    uintptr_t emu_stop;        /* address of Unicorn's uc_emu_stop */
    uintptr_t reg_read;        /* address of Unicorn's uc_reg_read */
} mc_uc_ctl;
void mc_uc_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);

/* 1 if any byte of [addr, addr+len) (wrapping at 2^64) is MMIO, else 0. */
int mc_as_touches_mmio(mc_flat *f, uint64_t addr, uint64_t len);

/* Standard base64 (with '=' padding) of [addr, addr+len) read through the flat view, written to
 * out (4 * ceil(len / 3) chars). Returns 0, or -1 without writing if the range touches MMIO. */
int mc_as_b64encode(mc_flat *f, uint64_t addr, uint64_t len, char *out);

/*
 * qtest fast path: answers a run of complete lines of `buf` that are plain readb/w/l/q, writeb/w/l/q
 * (with an address range touching no MMIO) or endianness, writing QEMU's replies into `out`.
 * It stops before the first line it cannot answer exactly (any other command, a parse error,
 * MMIO, an incomplete line, or less than 64 bytes left in `out`) so the caller handles that line.
 * Returns the number of lines answered; *consumed and *outlen say how many bytes were used.
 */
int64_t mc_qtest_fast(mc_flat *mem, const char *buf, uint64_t len, char *out, uint64_t outcap,
                      uint64_t *consumed, uint64_t *outlen);

#endif
