/* memcore: guest RAM, dirty bitmaps, flat-view dispatch and qtest codecs. See memcore.h. */
#define _GNU_SOURCE
#include "memcore.h"
#include "iov.h"
#include "ram_flags.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct mc_block {
    uint8_t *host;
    uint64_t size;       /* multiple of MC_PAGE_SIZE */
    uint64_t pages;
    uint64_t words;
    _Atomic uint64_t *bitmap;
};

/* Old tables stay alive until mc_flat_reclaim (or mc_flat_free): a reader that does not hold the
 * caller's lock (the vCPU's write hook) may still walk one. */
struct mc_flat {
    _Atomic(mc_range *) ranges;
    _Atomic uint64_t count;
    pthread_mutex_t lock;
    mc_range **retired;
    uint64_t nretired;
};

/* ---------------------------------------------------------------- blocks */

mc_block *mc_block_new(uint64_t size)
{
    if (size == 0 || size > (1ULL << 46)) {
        return NULL;
    }
    size = (size + MC_PAGE_SIZE - 1) & ~(MC_PAGE_SIZE - 1);
    mc_block *b = calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    /* As QEMU does for guest RAM (ram_block_add): 2 MiB aligned, and transparent huge pages asked
     * for (MADV_HUGEPAGE), so filling fresh memory (a migration destination) takes one fault per
     * 2 MiB instead of one per 4 KiB page. Like QEMU's, fills then vary with the host: when the
     * kernel must compact memory to find huge pages they take several times longer. */
    const uint64_t align = 2u << 20;
    uint8_t *raw = mmap(NULL, size + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (raw == MAP_FAILED) {
        free(b);
        return NULL;
    }
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (p > raw) {
        munmap(raw, (size_t)(p - raw));
    }
    if (p + size < raw + size + align) {
        munmap(p + size, (size_t)(raw + size + align - (p + size)));
    }
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);  /* advice: a host without THP ignores it */
#endif
    b->host = p;
    b->size = size;
    b->pages = size >> MC_PAGE_BITS;
    b->words = (b->pages + 63) / 64;
    b->bitmap = calloc(b->words, sizeof(uint64_t));
    if (!b->bitmap) {
        munmap(p, size);
        free(b);
        return NULL;
    }
    return b;
}

void mc_block_free(mc_block *b)
{
    if (!b) {
        return;
    }
    munmap(b->host, b->size);
    free((void *)b->bitmap);
    free(b);
}

uint8_t *mc_block_host(mc_block *b) { return b->host; }
uint64_t mc_block_size(mc_block *b) { return b->size; }
uint64_t mc_block_pages(mc_block *b) { return b->pages; }
uint64_t *mc_block_bitmap(mc_block *b) { return (uint64_t *)b->bitmap; }
uint64_t mc_block_bitmap_words(mc_block *b) { return b->words; }

static int range_ok(mc_block *b, uint64_t off, uint64_t len)
{
    return off <= b->size && len <= b->size - off;
}

static void dirty_mark(mc_block *b, uint64_t off, uint64_t len)
{
    if (len == 0) {
        return;
    }
    uint64_t first = off >> MC_PAGE_BITS;
    uint64_t last = (off + len - 1) >> MC_PAGE_BITS;
    uint64_t w0 = first / 64, w1 = last / 64;
    for (uint64_t w = w0; w <= w1; w++) {
        uint64_t lo = (w == w0) ? first % 64 : 0;
        uint64_t hi = (w == w1) ? last % 64 : 63;
        uint64_t mask = (hi == 63 ? ~0ULL : ((1ULL << (hi + 1)) - 1)) & ~((1ULL << lo) - 1);
        /* Skip the atomic RMW when the bits are already set: the common case for hot pages. */
        if ((atomic_load_explicit(&b->bitmap[w], memory_order_relaxed) & mask) != mask) {
            atomic_fetch_or_explicit(&b->bitmap[w], mask, memory_order_relaxed);
        }
    }
}

int mc_block_read(mc_block *b, uint64_t off, uint8_t *buf, uint64_t len)
{
    if (!range_ok(b, off, len)) {
        return MC_EINVAL;
    }
    memcpy(buf, b->host + off, len);
    return 0;
}

int mc_block_write(mc_block *b, uint64_t off, const uint8_t *buf, uint64_t len)
{
    if (!range_ok(b, off, len)) {
        return MC_EINVAL;
    }
    memcpy(b->host + off, buf, len);
    dirty_mark(b, off, len);
    return 0;
}

int mc_block_fill(mc_block *b, uint64_t off, uint8_t byte, uint64_t len)
{
    if (!range_ok(b, off, len)) {
        return MC_EINVAL;
    }
    memset(b->host + off, byte, len);
    dirty_mark(b, off, len);
    return 0;
}

/* ---------------------------------------------------------------- dirty bitmap */

int mc_dirty_set(mc_block *b, uint64_t off, uint64_t len)
{
    if (!range_ok(b, off, len)) {
        return MC_EINVAL;
    }
    dirty_mark(b, off, len);
    return 0;
}

int mc_dirty_set_all(mc_block *b)
{
    dirty_mark(b, 0, b->size);
    return 0;
}

uint64_t mc_dirty_count(mc_block *b)
{
    uint64_t n = 0;
    for (uint64_t w = 0; w < b->words; w++) {
        n += (uint64_t)__builtin_popcountll(atomic_load_explicit(&b->bitmap[w], memory_order_relaxed));
    }
    return n;
}

int64_t mc_dirty_find_next(mc_block *b, uint64_t page)
{
    if (page >= b->pages) {
        return -1;
    }
    uint64_t w = page / 64;
    uint64_t v = atomic_load_explicit(&b->bitmap[w], memory_order_relaxed) & (~0ULL << (page % 64));
    for (;;) {
        if (v) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(v);
            return p < b->pages ? (int64_t)p : -1;
        }
        if (++w >= b->words) {
            return -1;
        }
        v = atomic_load_explicit(&b->bitmap[w], memory_order_relaxed);
    }
}

int mc_dirty_test(mc_block *b, uint64_t page)
{
    if (page >= b->pages) {
        return MC_EINVAL;
    }
    return (int)((atomic_load_explicit(&b->bitmap[page / 64], memory_order_relaxed) >> (page % 64)) & 1);
}

int64_t mc_dirty_merge(mc_block *b, uint64_t first, const uint64_t *bits, uint64_t npages)
{
    if (bits == NULL || first > b->pages || npages > b->pages - first) {
        return MC_EINVAL;
    }
    int64_t n = 0;
    for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
        uint64_t v = bits[w];
        if (w == npages / 64) {
            v &= (1ULL << (npages % 64)) - 1;  /* the last, partial word */
        }
        if (first % 64 == 0) {  /* the usual case (slots start at a block's first page): by word */
            if (v) {
                atomic_fetch_or_explicit(&b->bitmap[first / 64 + w], v, memory_order_relaxed);
                n += __builtin_popcountll(v);
            }
            continue;
        }
        while (v) {
            uint64_t p = first + w * 64 + (uint64_t)__builtin_ctzll(v);
            v &= v - 1;
            atomic_fetch_or_explicit(&b->bitmap[p / 64], 1ULL << (p % 64), memory_order_relaxed);
            n++;
        }
    }
    return n;
}

int64_t mc_dirty_fetch_clear(mc_block *b, uint64_t *out, uint64_t nwords)
{
    if (nwords != b->words) {
        return MC_EINVAL;
    }
    int64_t n = 0;
    for (uint64_t w = 0; w < b->words; w++) {
        /* exchange, not load+store: a write racing with the sync is never lost */
        uint64_t v = atomic_load_explicit(&b->bitmap[w], memory_order_relaxed)
                         ? atomic_exchange_explicit(&b->bitmap[w], 0, memory_order_acq_rel)
                         : 0;
        out[w] = v;
        n += __builtin_popcountll(v);
    }
    return n;
}

int64_t mc_block_populated(mc_block *b)
{
    uint64_t chunk = 1 << 16; /* pages per mincore call: bounded scratch */
    unsigned char *vec = malloc(chunk);
    if (!vec) {
        return -1;
    }
    int64_t n = 0;
    for (uint64_t p = 0; p < b->pages; p += chunk) {
        uint64_t cnt = b->pages - p < chunk ? b->pages - p : chunk;
        if (mincore(b->host + (p << MC_PAGE_BITS), cnt << MC_PAGE_BITS, vec) != 0) {
            free(vec);
            return -1;
        }
        for (uint64_t i = 0; i < cnt; i++) {
            n += vec[i] & 1;
        }
    }
    free(vec);
    return n;
}

int mc_block_discard(mc_block *b, uint64_t page, uint64_t npages)
{
    if (page > b->pages || npages > b->pages - page) {
        return MC_EINVAL;
    }
    if (npages && madvise(b->host + (page << MC_PAGE_BITS), npages << MC_PAGE_BITS, MADV_DONTNEED) != 0) {
        return MC_EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- zero detection */

int mc_is_zero(const uint8_t *p, uint64_t len)
{
    uint64_t i = 0;
    /* head until 8-byte alignment, then words, then tail */
    while (i < len && ((uintptr_t)(p + i) & 7)) {
        if (p[i++]) {
            return 0;
        }
    }
    const uint64_t *w = (const uint64_t *)(p + i);
    uint64_t nw = (len - i) / 8;
    for (uint64_t k = 0; k + 4 <= nw; k += 4) {
        if (w[k] | w[k + 1] | w[k + 2] | w[k + 3]) {
            return 0;
        }
    }
    for (uint64_t k = nw & ~3ULL; k < nw; k++) {
        if (w[k]) {
            return 0;
        }
    }
    for (i += nw * 8; i < len; i++) {
        if (p[i]) {
            return 0;
        }
    }
    return 1;
}

int mc_zero_pages(mc_block *b, uint64_t page, uint64_t npages, uint8_t *out)
{
    return mc_zero_pages_pm(b, page, npages, -1, NULL, out);
}

int mc_zero_pages_pm(mc_block *b, uint64_t page, uint64_t npages, int pagemap_fd, uint64_t *scratch, uint8_t *out)
{
    if (page > b->pages || npages > b->pages - page) {
        return MC_EINVAL;
    }
    /* never-populated pages (neither present nor swapped) are zero: no need to read (and map) them */
    int have_pm = 0;
    if (pagemap_fd >= 0 && scratch && npages) {
        uint64_t vpn = ((uintptr_t)b->host >> MC_PAGE_BITS) + page;
        have_pm = pread(pagemap_fd, scratch, npages * 8, (off_t)(vpn * 8)) == (ssize_t)(npages * 8);
    }
    for (uint64_t i = 0; i < npages; i++) {
        if (have_pm && !((scratch[i] >> 62) & 3)) {
            out[i] = 1;
            continue;
        }
        out[i] = (uint8_t)mc_is_zero(b->host + ((page + i) << MC_PAGE_BITS), MC_PAGE_SIZE);
    }
    return 0;
}

/* ---------------------------------------------------------------- migration: RAM records */

/* One pass over the buffered records: how far the run goes and the span of its zero-fill pages. */
static uint64_t ram_run_scan(mc_block *b, const uint8_t *buf, uint64_t len, uint64_t rmap_len,
                             uint64_t *zmin, uint64_t *zmax, int *ascending)
{
    uint64_t pos = 0;
    uint64_t prev = 0;
    *zmin = UINT64_MAX;
    *zmax = 0;
    *ascending = 1;
    while (len - pos >= 8) {
        uint64_t word = ram_get_be64(buf + pos);
        uint64_t flags = word & (MC_PAGE_SIZE - 1);
        uint64_t page = word >> MC_PAGE_BITS;
        if (page >= b->pages || page >= rmap_len) {
            break;
        }
        if (pos && page <= prev) {
            *ascending = 0;
        }
        prev = page;
        if (flags == (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE) && len - pos >= 9) {
            if (buf[pos + 8] == 0) {
                *zmin = page < *zmin ? page : *zmin;
                *zmax = page > *zmax ? page : *zmax;
            }
            pos += 9;
        } else if (flags == (RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE) && len - pos >= 8 + MC_PAGE_SIZE) {
            pos += 8 + MC_PAGE_SIZE;
        } else {
            break;
        }
    }
    return pos;
}

/* One stretch [start, end) of a scanned run of CONTINUE ZERO/PAGE records. */
typedef struct {
    mc_block *b;
    const uint8_t *buf;
    uint64_t start, end;
    const uint64_t *pm;  /* pagemap words from page zmin, or NULL */
    uint64_t zmin;
    uint8_t *rmap;
    uint64_t counts[2];
} load_job;

static void load_apply(load_job *j)
{
    mc_block *b = j->b;
    const uint8_t *buf = j->buf;
    uint64_t pos = j->start;
    while (pos < j->end) {
        uint64_t word = ram_get_be64(buf + pos);
        uint64_t off = word & ~(uint64_t)(MC_PAGE_SIZE - 1);
        uint64_t page = off >> MC_PAGE_BITS;
        if ((word & (MC_PAGE_SIZE - 1)) == (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)) {
            uint8_t fill = buf[pos + 8];
            int untouched = fill == 0 && j->pm && !((j->pm[page - j->zmin] >> 62) & 3);
            if (!untouched && (fill != 0 || !mc_is_zero(b->host + off, MC_PAGE_SIZE))) {
                memset(b->host + off, fill, MC_PAGE_SIZE);
                dirty_mark(b, off, MC_PAGE_SIZE);
            }
            j->counts[0]++;
            pos += 9;
        } else {
            memcpy(b->host + off, buf + pos + 8, MC_PAGE_SIZE);
            dirty_mark(b, off, MC_PAGE_SIZE);
            j->counts[1]++;
            pos += 8 + MC_PAGE_SIZE;
        }
        j->rmap[page] = 1;
    }
}

/* A helper thread that applies the second half of large runs: most of the cost of loading pages
 * is the kernel populating fresh guest memory on first touch, and two threads fault in parallel.
 * One caller at a time (helper_user); a busy helper means the caller applies the run alone. */
static pthread_mutex_t helper_user = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t helper_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t helper_cv = PTHREAD_COND_INITIALIZER;
static load_job *helper_job;
static int helper_running;

static void *helper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&helper_mu);
    for (;;) {
        while (!helper_job) {
            pthread_cond_wait(&helper_cv, &helper_mu);
        }
        load_job *j = helper_job;
        pthread_mutex_unlock(&helper_mu);
        load_apply(j);
        pthread_mutex_lock(&helper_mu);
        helper_job = NULL;
        pthread_cond_broadcast(&helper_cv);
    }
    return NULL;
}

static int helper_start(void)
{
    if (helper_running) {
        return 1;
    }
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    helper_running = pthread_create(&t, &attr, helper_main, NULL) == 0;
    pthread_attr_destroy(&attr);
    return helper_running;
}

#define PARALLEL_MIN_BYTES (256u << 10)

uint64_t mc_ram_load_run(mc_block *b, const uint8_t *buf, uint64_t len, uint8_t *rmap, uint64_t rmap_len,
                         int pagemap_fd, uint64_t *counts)
{
    uint64_t zmin, zmax;
    int ascending;
    uint64_t end = ram_run_scan(b, buf, len, rmap_len, &zmin, &zmax, &ascending);
    /* Pages never populated (neither present nor swapped, per /proc/self/pagemap) read as zero:
     * a zero fill leaves them alone without touching (and so populating) them. */
    uint64_t *pm = NULL;
    if (pagemap_fd >= 0 && zmin <= zmax && zmax - zmin < (1u << 20)) {
        uint64_t n = zmax - zmin + 1;
        pm = malloc(n * 8);
        uint64_t vpn = ((uintptr_t)b->host >> MC_PAGE_BITS) + zmin;
        if (pm && pread(pagemap_fd, pm, n * 8, (off_t)(vpn * 8)) != (ssize_t)(n * 8)) {
            free(pm);
            pm = NULL;
        }
    }
    load_job first = {b, buf, 0, end, pm, zmin, rmap, {0, 0}};
    load_job second = first;
    /* Two halves in parallel only when no page can be in both (strictly ascending pages): the
     * result is then the same as applying the records in order. */
    int parallel = end >= PARALLEL_MIN_BYTES && ascending && pthread_mutex_trylock(&helper_user) == 0;
    if (parallel) {
        pthread_mutex_lock(&helper_mu);
        parallel = helper_start();
        pthread_mutex_unlock(&helper_mu);
        if (!parallel) {
            pthread_mutex_unlock(&helper_user);
        }
    }
    if (parallel) {
        uint64_t mid = 0;
        while (mid < end / 2) {
            uint64_t flags = buf[mid + 7] & 0xff;
            flags |= (uint64_t)(buf[mid + 6] & 0x0f) << 8;
            mid += flags == (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE) ? 9 : 8 + MC_PAGE_SIZE;
        }
        first.end = second.start = mid;
        pthread_mutex_lock(&helper_mu);
        helper_job = &second;
        pthread_cond_broadcast(&helper_cv);
        pthread_mutex_unlock(&helper_mu);
        load_apply(&first);
        pthread_mutex_lock(&helper_mu);
        while (helper_job) {
            pthread_cond_wait(&helper_cv, &helper_mu);
        }
        pthread_mutex_unlock(&helper_mu);
        pthread_mutex_unlock(&helper_user);
    } else {
        load_apply(&first);
    }
    counts[0] += first.counts[0] + (parallel ? second.counts[0] : 0);
    counts[1] += first.counts[1] + (parallel ? second.counts[1] : 0);
    free(pm);
    return end;
}

int64_t mc_ram_encode_run(mc_block *b, uint64_t page, uint64_t npages, const uint8_t *zero_map,
                          const uint8_t *name, uint64_t name_len, uint8_t *out, uint64_t cap)
{
    if (page > b->pages || npages > b->pages - page || name_len > 255) {
        return MC_EINVAL;
    }
    uint64_t need = name ? 1 + name_len : 0;
    for (uint64_t i = 0; i < npages; i++) {
        need += zero_map[i] ? 9 : 8 + MC_PAGE_SIZE;
    }
    if (cap < need) {
        return MC_EINVAL;
    }
    uint8_t *o = out;
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t off = (page + i) << MC_PAGE_BITS;
        int zero = zero_map[i] != 0;
        o = ram_put_header(o, off | (zero ? RAM_SAVE_FLAG_ZERO : RAM_SAVE_FLAG_PAGE), name, name_len, i == 0 && name);
        if (zero) {
            *o++ = 0;
        } else {
            memcpy(o, b->host + off, MC_PAGE_SIZE);
            o += MC_PAGE_SIZE;
        }
    }
    return (int64_t)(o - out);
}

#define SEND_IOV 1024

int64_t mc_ram_send_run(mc_block *b, uint64_t page, uint64_t npages, const uint8_t *zero_map,
                        const uint8_t *name, uint64_t name_len, int fd, int wake_fd)
{
    if (page > b->pages || npages > b->pages - page || name_len > 255) {
        return MC_EINVAL;
    }
    /* headers of one batch: at most SEND_IOV records of 9 bytes, plus the name */
    uint8_t hdr[SEND_IOV * 9 + 256 + 8];
    struct iovec iov[SEND_IOV];
    int64_t total = 0;
    uint64_t i = 0;
    while (i < npages) {
        int n = 0;
        uint8_t *h = hdr;
        uint64_t end = npages - i > SEND_IOV ? i + SEND_IOV : npages;  /* hdr holds SEND_IOV records */
        /* room for one more record: a header iov (merged with the previous header bytes when
         * they are contiguous) and a page iov */
        while (i < end && n <= SEND_IOV - 2) {
            uint64_t off = (page + i) << MC_PAGE_BITS;
            int zero = zero_map[i] != 0;
            uint8_t *start = h;
            h = ram_put_header(h, off | (zero ? RAM_SAVE_FLAG_ZERO : RAM_SAVE_FLAG_PAGE), name, name_len,
                               i == 0 && name);
            if (zero) {
                *h++ = 0;
            }
            if (n > 0 && (uint8_t *)iov[n - 1].iov_base + iov[n - 1].iov_len == start) {
                iov[n - 1].iov_len += (size_t)(h - start);
            } else {
                iov[n].iov_base = start;
                iov[n].iov_len = (size_t)(h - start);
                n++;
            }
            if (!zero) {
                iov[n].iov_base = b->host + off;
                iov[n].iov_len = MC_PAGE_SIZE;
                n++;
            }
            total += (int64_t)(h - start) + (zero ? 0 : (int64_t)MC_PAGE_SIZE);
            i++;
        }
        int64_t r = writev_all(fd, wake_fd, iov, n);
        if (r < 0) {
            return r;
        }
    }
    return total;
}

/* ---------------------------------------------------------------- flat views */

mc_flat *mc_flat_new(void)
{
    mc_flat *f = calloc(1, sizeof(*f));
    if (!f) {
        return NULL;
    }
    pthread_mutex_init(&f->lock, NULL);
    return f;
}

void mc_flat_free(mc_flat *f)
{
    if (!f) {
        return;
    }
    for (uint64_t i = 0; i < f->nretired; i++) {
        free(f->retired[i]);
    }
    free(f->retired);
    free(atomic_load(&f->ranges));
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void mc_flat_reclaim(mc_flat *f)
{
    pthread_mutex_lock(&f->lock);
    for (uint64_t i = 0; i < f->nretired; i++) {
        free(f->retired[i]);
    }
    free(f->retired);
    f->retired = NULL;
    f->nretired = 0;
    pthread_mutex_unlock(&f->lock);
}

uint64_t mc_flat_retired(mc_flat *f)
{
    pthread_mutex_lock(&f->lock);
    uint64_t n = f->nretired;
    pthread_mutex_unlock(&f->lock);
    return n;
}

int mc_flat_set(mc_flat *f, const mc_range *ranges, uint64_t n)
{
    if (n > (1ULL << 24)) {
        return MC_EINVAL;
    }
    for (uint64_t i = 0; i < n; i++) {
        const mc_range *r = &ranges[i];
        if (r->last < r->start || (i > 0 && r->start <= ranges[i - 1].last)) {
            return MC_EINVAL;
        }
        if (r->kind == MC_KIND_RAM || r->kind == MC_KIND_ROM) {
            uint64_t span = r->last - r->start; /* bytes - 1 */
            if (!r->block || r->offset >= r->block->size || span > r->block->size - r->offset - 1) {
                return MC_EINVAL;
            }
        } else if (r->kind != MC_KIND_MMIO) {
            return MC_EINVAL;
        }
    }
    mc_range *copy = NULL;
    if (n) {
        copy = malloc(n * sizeof(mc_range));
        if (!copy) {
            return MC_ENOMEM;
        }
        memcpy(copy, ranges, n * sizeof(mc_range));
    }
    pthread_mutex_lock(&f->lock);
    mc_range *old = atomic_load(&f->ranges);
    if (old) {
        mc_range **r = realloc(f->retired, (f->nretired + 1) * sizeof(*r));
        if (!r) {
            pthread_mutex_unlock(&f->lock);
            free(copy);
            return MC_ENOMEM;
        }
        f->retired = r;
        f->retired[f->nretired++] = old;
    }
    /* count first set to 0 so a reader never pairs the new table with a stale, larger count */
    atomic_store(&f->count, 0);
    atomic_store(&f->ranges, copy);
    atomic_store(&f->count, n);
    pthread_mutex_unlock(&f->lock);
    return 0;
}

uint64_t mc_flat_count(mc_flat *f) { return atomic_load(&f->count); }

/* Index of the first range whose last >= addr (may not contain addr), or n. */
static uint64_t flat_search(const mc_range *r, uint64_t n, uint64_t addr)
{
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (r[mid].last < addr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

int64_t mc_flat_lookup(mc_flat *f, uint64_t addr)
{
    uint64_t n = atomic_load(&f->count);
    const mc_range *r = atomic_load(&f->ranges);
    uint64_t i = flat_search(r, n, addr);
    return (i < n && r[i].start <= addr) ? (int64_t)i : -1;
}

enum { OP_READ, OP_WRITE, OP_FILL };

static int64_t as_access(mc_flat *f, int op, uint64_t addr, uint8_t *rbuf, const uint8_t *wbuf, uint8_t byte,
                         uint64_t len, int64_t *mmio)
{
    uint64_t n = atomic_load(&f->count);
    const mc_range *r = atomic_load(&f->ranges);
    uint64_t done = 0;
    *mmio = -1;
    if (len > INT64_MAX) {
        return MC_EINVAL;
    }
    uint64_t i = flat_search(r, n, addr);
    while (done < len) {
        uint64_t a = addr + done; /* wraps past 2^64 - 1 to 0, as QEMU's address arithmetic does */
        uint64_t left = len - done;
        if (a == 0 && done) {
            i = 0; /* wrapped: chunks always end exactly at the top, so we restart at 0 */
        }
        while (i < n && r[i].last < a) {
            i++;
        }
        uint64_t chunk;
        if (i >= n || r[i].start > a) {
            /* unassigned gap up to the next range (or the end) */
            uint64_t gap = (i < n) ? r[i].start - a : UINT64_MAX - a + 1;
            chunk = (gap == 0 || gap > left) ? left : gap;
            if (op == OP_READ) {
                memset(rbuf + done, 0, chunk);
            }
        } else {
            const mc_range *cur = &r[i];
            if (cur->kind == MC_KIND_MMIO) {
                *mmio = (int64_t)i;
                return (int64_t)done;
            }
            uint64_t span = cur->last - a; /* bytes - 1 */
            chunk = (span >= left - 1) ? left : span + 1;
            uint64_t off = cur->offset + (a - cur->start);
            uint8_t *host = cur->block->host + off;
            if (op == OP_READ) {
                memcpy(rbuf + done, host, chunk);
            } else if (cur->kind == MC_KIND_RAM) {
                if (op == OP_WRITE) {
                    memcpy(host, wbuf + done, chunk);
                } else {
                    memset(host, byte, chunk);
                }
                dirty_mark(cur->block, off, chunk);
            }
        }
        done += chunk;
    }
    return (int64_t)done;
}

int64_t mc_as_read(mc_flat *f, uint64_t addr, uint8_t *buf, uint64_t len, int64_t *mmio)
{
    return as_access(f, OP_READ, addr, buf, NULL, 0, len, mmio);
}

int64_t mc_as_write(mc_flat *f, uint64_t addr, const uint8_t *buf, uint64_t len, int64_t *mmio)
{
    return as_access(f, OP_WRITE, addr, NULL, buf, 0, len, mmio);
}

int64_t mc_as_fill(mc_flat *f, uint64_t addr, uint8_t byte, uint64_t len, int64_t *mmio)
{
    return as_access(f, OP_FILL, addr, NULL, NULL, byte, len, mmio);
}

/* ---------------------------------------------------------------- qtest codecs */

static int nibble(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

void mc_qtest_hex_decode(const char *data, uint64_t datalen, uint8_t *out, uint64_t len)
{
    uint64_t i = 0;
    for (; i < len && datalen >= 4 && i <= (datalen - 4) / 2; i++) {
        /* (-1 << 4) | x sets every bit, as QEMU's decoder does for invalid digits */
        int hi = nibble(data[2 + 2 * i]), lo = nibble(data[3 + 2 * i]);
        out[i] = (uint8_t)((unsigned)(hi * 16) | (unsigned)lo);
    }
    memset(out + i, 0, len - i);
}

static signed char b64_rank[256];
static signed char b64_strict[256]; /* as b64_rank, but '=' is not a plain digit */
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_init(void)
{
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(b64_rank, -1, sizeof(b64_rank));
    for (int i = 0; i < 64; i++) {
        b64_rank[(unsigned char)alpha[i]] = (signed char)i;
    }
    memcpy(b64_strict, b64_rank, sizeof(b64_strict));
    b64_rank['='] = 0; /* a zero digit; its position decides which bytes are emitted */
}

uint64_t mc_glib_b64_decode_step(mc_b64_state *st, const char *in, uint64_t inlen, uint8_t *out, uint64_t outcap)
{
    pthread_once(&b64_once, b64_init);
    const signed char *rank = b64_rank, *strict = b64_strict;
    const unsigned char *p = (const unsigned char *)in;
    uint64_t o = st->total;
    uint32_t v = st->v;
    int n = st->n;
    unsigned char last0 = st->last0, last1 = st->last1;
    uint64_t k = 0;
    while (k < inlen) {
        /* Fast path: a whole quantum of four plain alphabet characters (no '=', nothing skipped). */
        while (n == 0 && k + 4 <= inlen && o + 3 <= outcap) {
            int a = strict[p[k]], b = strict[p[k + 1]], c = strict[p[k + 2]], d = strict[p[k + 3]];
            if ((a | b | c | d) < 0) {
                break;
            }
            uint32_t q = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | (uint32_t)d;
            out[o] = (uint8_t)(q >> 16);
            out[o + 1] = (uint8_t)(q >> 8);
            out[o + 2] = (uint8_t)q;
            o += 3;
            k += 4;
        }
        if (k >= inlen) {
            break;
        }
        unsigned char ch = p[k++];
        int r = rank[ch];
        if (r < 0) {
            continue;
        }
        last1 = last0;
        last0 = ch;
        v = (v << 6) | (uint32_t)r;
        if (++n == 4) {
            /* GLib emits byte 0, then byte 1 unless the 3rd char was '=', byte 2 unless the 4th was */
            uint8_t emit[3];
            int e = 0;
            emit[e++] = (uint8_t)(v >> 16);
            if (last1 != '=') {
                emit[e++] = (uint8_t)(v >> 8);
            }
            if (last0 != '=') {
                emit[e++] = (uint8_t)v;
            }
            for (int i = 0; i < e; i++, o++) {
                if (o < outcap) {
                    out[o] = emit[i];
                }
            }
            n = 0;
        }
    }
    st->v = v;
    st->n = n;
    st->last0 = last0;
    st->last1 = last1;
    st->total = o;
    return o;
}

uint64_t mc_glib_b64_decode(const char *in, uint64_t inlen, uint8_t *out)
{
    mc_b64_state st = {0};
    return mc_glib_b64_decode_step(&st, in, inlen, out, UINT64_MAX);
}

/* ---------------------------------------------------------------- qtest fast path */

/* Parses one token like qemu_strtou64 (strtoull, base 0, whole token). 0 on success. */
static int parse_u64_token(const char *tok, size_t n, uint64_t *val)
{
    char tmp[72];
    if (n == 0 || n >= sizeof(tmp)) {
        return -1;
    }
    memcpy(tmp, tok, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(tmp, &end, 0);
    if (errno != 0 || end == tmp || *end != 0) {
        return -1;
    }
    *val = (uint64_t)v;
    return 0;
}

/* True when [addr, last] holds no MMIO byte. */
static int no_mmio_span(const mc_range *r, uint64_t n, uint64_t addr, uint64_t last)
{
    for (uint64_t i = flat_search(r, n, addr); i < n && r[i].start <= last; i++) {
        if (r[i].kind == MC_KIND_MMIO) {
            return 0;
        }
    }
    return 1;
}

/* True when [addr, addr+size) (wrapping at 2^64) lies in RAM/ROM/unassigned space only. */
static int no_mmio(mc_flat *f, uint64_t addr, uint64_t size)
{
    uint64_t n = atomic_load(&f->count);
    const mc_range *r = atomic_load(&f->ranges);
    uint64_t last = addr + size - 1;
    if (last < addr) {
        return no_mmio_span(r, n, addr, UINT64_MAX) && no_mmio_span(r, n, 0, last);
    }
    return no_mmio_span(r, n, addr, last);
}

/* A qtest line's first three tokens, split on every single space as g_strsplit does. */
typedef struct {
    const char *tok[3];
    size_t tlen[3];
    int nt;
} qt_tokens;

static void qt_split(const char *p, const char *e, qt_tokens *t)
{
    t->nt = 0;
    while (t->nt < 3) {
        const char *sp = memchr(p, ' ', (size_t)(e - p));
        t->tok[t->nt] = p;
        t->tlen[t->nt] = sp ? (size_t)(sp - p) : (size_t)(e - p);
        t->nt++;
        if (!sp) {
            return;
        }
        p = sp + 1;
    }
}

/* The access size of a read/write command from its last letter (readb .. writeq), or 0. */
static int qt_access_size(char suffix)
{
    switch (suffix) {
    case 'b': return 1;
    case 'w': return 2;
    case 'l': return 4;
    case 'q': return 8;
    default: return 0;
    }
}

/* Answers a RAM/ROM/unassigned read or write of `size` bytes at addr into out: the reply's length. */
static uint64_t qt_access(mc_flat *mem, int is_write, uint64_t addr, int size, uint64_t val, char *out,
                          uint64_t room)
{
    uint8_t bytes[8];
    int64_t mmio;
    if (is_write) {
        for (int i = 0; i < size; i++) {
            bytes[i] = (uint8_t)(val >> (8 * i)); /* x86 is little-endian */
        }
        as_access(mem, OP_WRITE, addr, NULL, bytes, 0, (uint64_t)size, &mmio);
        memcpy(out, "OK\n", 3);
        return 3;
    }
    as_access(mem, OP_READ, addr, bytes, NULL, 0, (uint64_t)size, &mmio);
    uint64_t v = 0;
    for (int i = size - 1; i >= 0; i--) {
        v = (v << 8) | bytes[i];
    }
    return (uint64_t)snprintf(out, room, "OK 0x%016" PRIx64 "\n", v);
}

/* Answers the line [line, nl) into out (room >= 64 bytes): the reply's length, or -1 when the
 * line is not one the fast path answers exactly as the Python server would. */
static int64_t qt_answer(mc_flat *mem, const char *line, const char *nl, char *out, uint64_t room)
{
    qt_tokens t;
    qt_split(line, nl, &t);
    if (nl == line) {
        return -1;
    }
    int is_write;
    if (t.tlen[0] == 5 && memcmp(t.tok[0], "read", 4) == 0) {
        is_write = 0;
    } else if (t.tlen[0] == 6 && memcmp(t.tok[0], "write", 5) == 0) {
        is_write = 1;
    } else if (t.tlen[0] == 10 && memcmp(t.tok[0], "endianness", 10) == 0) {
        memcpy(out, "OK little\n", 10);
        return 10;
    } else {
        return -1;
    }
    int size = qt_access_size(t.tok[0][t.tlen[0] - 1]);
    if (!size || t.nt < 2 + is_write) {
        return -1;
    }
    uint64_t addr, val = 0;
    if (parse_u64_token(t.tok[1], t.tlen[1], &addr) != 0) {
        return -1;
    }
    if (is_write && parse_u64_token(t.tok[2], t.tlen[2], &val) != 0) {
        return -1;
    }
    if (!no_mmio(mem, addr, (uint64_t)size)) {
        return -1;
    }
    return (int64_t)qt_access(mem, is_write, addr, size, val, out, room);
}

int64_t mc_qtest_fast(mc_flat *mem, const char *buf, uint64_t len, char *out, uint64_t outcap,
                      uint64_t *consumed, uint64_t *outlen)
{
    uint64_t pos = 0, o = 0;
    int64_t lines = 0;
    while (pos < len && outcap - o >= 64) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        if (!nl) {
            break;
        }
        int64_t n = qt_answer(mem, line, nl, out + o, outcap - o);
        if (n < 0) {
            break;
        }
        o += (uint64_t)n;
        pos += (uint64_t)(nl - line) + 1;
        lines++;
    }
    *consumed = pos;
    *outlen = o;
    return lines;
}

void mc_as_mark_dirty(mc_flat *f, uint64_t addr, uint64_t len)
{
    uint64_t n = atomic_load(&f->count);
    const mc_range *r = atomic_load(&f->ranges);
    if (len == 0) {
        return;
    }
    uint64_t last = addr + len - 1 < addr ? UINT64_MAX : addr + len - 1;
    for (uint64_t i = flat_search(r, n, addr); i < n && r[i].start <= last; i++) {
        if (r[i].kind != MC_KIND_RAM) {
            continue;
        }
        uint64_t lo = addr > r[i].start ? addr : r[i].start;
        uint64_t hi = last < r[i].last ? last : r[i].last;
        dirty_mark(r[i].block, r[i].offset + (lo - r[i].start), hi - lo + 1);
    }
}

void mc_uc_write_hook(void *uc, int type, uint64_t address, int size, int64_t value, void *user_data)
{
    mc_flat *f = user_data;
    uint64_t n = atomic_load(&f->count);
    const mc_range *r = atomic_load(&f->ranges);
    uint64_t i = flat_search(r, n, address);
    /* the common case: one store inside one RAM range */
    if (i < n && r[i].kind == MC_KIND_RAM && r[i].start <= address && address + (uint64_t)size - 1 <= r[i].last) {
        dirty_mark(r[i].block, r[i].offset + (address - r[i].start), (uint64_t)size);
        return;
    }
    mc_as_mark_dirty(f, address, (uint64_t)size);
}

void mc_uc_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    mc_uc_ctl *c = user_data;
    if (c->stop) {
        ((int (*)(void *))c->emu_stop)(uc);
    } else if (c->want_if) {
        uint64_t flags = 0;
        ((int (*)(void *, int, void *))c->reg_read)(uc, c->eflags_reg, &flags);
        if (flags & 0x200) { /* IF: the pending interrupt can be taken here */
            ((int (*)(void *))c->emu_stop)(uc);
        }
    }
}

int mc_as_touches_mmio(mc_flat *f, uint64_t addr, uint64_t len)
{
    return len != 0 && !no_mmio(f, addr, len);
}

/* ---------------------------------------------------------------- base64 encoding */

static char b64_pairs[4096][2];
static pthread_once_t b64_pairs_once = PTHREAD_ONCE_INIT;

static void b64_pairs_init(void)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 4096; i++) {
        b64_pairs[i][0] = alpha[i >> 6];
        b64_pairs[i][1] = alpha[i & 63];
    }
}

/* Encodes n bytes (n % 3 == 0 unless `last`) into out; returns chars written. */
static uint64_t b64_encode_block(const uint8_t *in, uint64_t n, char *out, int last)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t i = 0, o = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        memcpy(out + o, b64_pairs[v >> 12], 2);
        memcpy(out + o + 2, b64_pairs[v & 4095], 2);
        o += 4;
    }
    if (last && i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)in[i + 1] << 8;
        }
        out[o++] = alpha[(v >> 18) & 63];
        out[o++] = alpha[(v >> 12) & 63];
        out[o++] = (i + 1 < n) ? alpha[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

int mc_as_b64encode(mc_flat *f, uint64_t addr, uint64_t len, char *out)
{
    if (len == 0) {
        return 0;
    }
    if (!no_mmio(f, addr, len)) {
        return -1;
    }
    pthread_once(&b64_pairs_once, b64_pairs_init);
    uint8_t chunk[3 * 16384];
    int64_t mmio;
    uint64_t done = 0, o = 0;
    while (done < len) {
        uint64_t n = len - done < sizeof(chunk) ? len - done : sizeof(chunk);
        as_access(f, OP_READ, addr + done, chunk, NULL, 0, n, &mmio);
        done += n;
        o += b64_encode_block(chunk, n, out + o, done == len);
    }
    return 0;
}
