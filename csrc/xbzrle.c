/* xbzrle: XBZRLE page cache, delta encoder and record encoder (source side). See xbzrle.h. */
#define _GNU_SOURCE
#include "xbzrle.h"
#include "ram_flags.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PS ((uint32_t)MC_PAGE_SIZE)
/* Slot tags: key | 1 for a used slot, 0 for an empty one (keys are page-aligned), so that a
 * calloc'ed tag array needs no initialisation pass. */
#define TAG(key) ((key) | 1)

struct xb_cache {
    uint64_t nslots;
    uint64_t *tags;
    uint64_t *ages;
    uint8_t *data; /* nslots pages of anonymous memory: populated only when a slot is first used */
};

/* ---------------------------------------------------------------- cache */

xb_cache *xb_cache_new(uint64_t size_bytes)
{
    uint64_t n = size_bytes / PS;
    if (n == 0 || (n & (n - 1)) != 0) {
        return NULL;
    }
    xb_cache *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->nslots = n;
    c->tags = calloc(n, sizeof(uint64_t));
    c->ages = calloc(n, sizeof(uint64_t));
    void *p = mmap(NULL, n * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    c->data = p == MAP_FAILED ? NULL : p;
    if (!c->tags || !c->ages || !c->data) {
        xb_cache_free(c);
        return NULL;
    }
    return c;
}

void xb_cache_free(xb_cache *c)
{
    if (!c) {
        return;
    }
    if (c->data) {
        munmap(c->data, c->nslots * PS);
    }
    free(c->tags);
    free(c->ages);
    free(c);
}

uint64_t xb_cache_slots(xb_cache *c)
{
    return c ? c->nslots : 0;
}

static inline uint64_t slot_of(const xb_cache *c, uint64_t key)
{
    return (key / PS) & (c->nslots - 1);
}

static inline uint8_t *slot_data(const xb_cache *c, uint64_t slot)
{
    return c->data + slot * PS;
}

/* page_cache.c's cache_insert; data NULL inserts a zero page. Returns 0, or -1 if refused. */
static int cache_insert(xb_cache *c, uint64_t key, const uint8_t *data, uint64_t generation)
{
    uint64_t s = slot_of(c, key);
    if (c->tags[s] && c->tags[s] != TAG(key) && c->ages[s] + XB_CACHED_PAGE_LIFETIME > generation) {
        return -1; /* another page's entry is still fresh */
    }
    if (data) {
        memcpy(slot_data(c, s), data, PS);
    } else {
        memset(slot_data(c, s), 0, PS);
    }
    c->tags[s] = TAG(key);
    c->ages[s] = generation;
    return 0;
}

int xb_cache_is_cached(xb_cache *c, uint64_t key, uint64_t generation)
{
    if (!c || (key & (PS - 1))) {
        return 0;
    }
    uint64_t s = slot_of(c, key);
    if (c->tags[s] != TAG(key)) {
        return 0;
    }
    c->ages[s] = generation; /* a hit keeps the entry fresh */
    return 1;
}

int xb_cache_insert(xb_cache *c, uint64_t key, const uint8_t *data, uint64_t generation)
{
    if (!c || !data || (key & (PS - 1))) {
        return MC_EINVAL;
    }
    return cache_insert(c, key, data, generation);
}

int xb_cache_peek(xb_cache *c, uint64_t key, uint8_t *data, uint64_t *age)
{
    if (!c || (key & (PS - 1))) {
        return 0;
    }
    uint64_t s = slot_of(c, key);
    if (c->tags[s] != TAG(key)) {
        return 0;
    }
    if (data) {
        memcpy(data, slot_data(c, s), PS);
    }
    if (age) {
        *age = c->ages[s];
    }
    return 1;
}

/* ---------------------------------------------------------------- delta encoder */

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* First k >= i with a[k] != b[k], or PS. Whole words while equal (32 bytes per step). */
static uint32_t equal_end(const uint8_t *a, const uint8_t *b, uint32_t i)
{
    for (; i < PS && (i & 7); i++) {
        if (a[i] != b[i]) {
            return i;
        }
    }
    for (; i + 32 <= PS; i += 32) {
        uint64_t x = (load64(a + i) ^ load64(b + i)) | (load64(a + i + 8) ^ load64(b + i + 8))
                   | (load64(a + i + 16) ^ load64(b + i + 16)) | (load64(a + i + 24) ^ load64(b + i + 24));
        if (x) {
            break;
        }
    }
    for (; i < PS; i += 8) {
        if (load64(a + i) != load64(b + i)) {
            while (a[i] == b[i]) {
                i++;
            }
            return i;
        }
    }
    return PS;
}

/* First k >= i with a[k] == b[k], or PS. Whole words while no byte matches. */
static uint32_t differ_end(const uint8_t *a, const uint8_t *b, uint32_t i)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; i < PS && (i & 7); i++) {
        if (a[i] == b[i]) {
            return i;
        }
    }
    for (; i < PS; i += 8) {
        uint64_t x = load64(a + i) ^ load64(b + i);
        if ((x - ones) & ~x & highs) { /* some byte of x is zero: an equal byte in this word */
            while (a[i] != b[i]) {
                i++;
            }
            return i;
        }
    }
    return PS;
}

static inline uint32_t put_uleb_small(uint8_t *o, uint32_t v)
{
    if (v < 0x80) {
        o[0] = (uint8_t)v;
        return 1;
    }
    o[0] = (uint8_t)(0x80 | (v & 0x7f));
    o[1] = (uint8_t)(v >> 7); /* v <= 4096 < 0x4000: two bytes at most */
    return 2;
}

/*
 * Output: maximal unchanged/changed runs, exactly as QEMU's xbzrle_encode_buffer (whose byte and
 * word loops also stop at the first differing/equal byte). The overflow checks are QEMU's with
 * dlen = 4096: "fewer than 2 bytes left" is checked before every zero run, including a trailing
 * one that would not be written, so an encoding of 4095-4096 bytes followed by unchanged bytes
 * is an overflow too.
 */
int xb_encode_page(const uint8_t *old_page, const uint8_t *new_page, uint8_t *dst)
{
    uint32_t i = 0, d = 0;
    while (i < PS) {
        if (d + 2 > PS) {
            return -1;
        }
        uint32_t j = equal_end(old_page, new_page, i);
        if (j == PS) {
            return (int)d; /* identical page (d == 0), or the trailing unchanged run is not sent */
        }
        d += put_uleb_small(dst + d, j - i);
        if (d + 2 > PS) {
            return -1;
        }
        uint32_t k = differ_end(old_page, new_page, j);
        d += put_uleb_small(dst + d, k - j);
        if (d + (k - j) > PS) {
            return -1;
        }
        memcpy(dst + d, new_page + j, k - j);
        d += k - j;
        i = k;
    }
    return (int)d;
}

/* ---------------------------------------------------------------- record encoder */

/* The validity checks of xb_encode_run, all made before anything changes: 0 or MC_EINVAL. */
static int run_check(const xb_cache *c, const xb_run *r)
{
    if (!r || !r->block || r->name_len > 255 || (r->name_pending && !r->name) || (r->started && !c)) {
        return MC_EINVAL;
    }
    uint64_t pages = mc_block_pages(r->block);
    if (r->page > pages || r->npages > pages - r->page || (r->npages && !r->zero_map)) {
        return MC_EINVAL;
    }
    if ((r->key_base & (PS - 1)) || r->key_base > UINT64_MAX - pages * PS) {
        return MC_EINVAL; /* keys must be page-aligned and not wrap */
    }
    /* the worst case fits, so that no page can fail halfway through the run */
    uint64_t need = r->name_pending ? 1 + r->name_len : 0;
    uint64_t page_max = r->started ? XB_RECORD_MAX : 8 + PS;
    for (uint64_t i = 0; i < r->npages; i++) {
        need += r->zero_map[i] ? XB_ZERO_RECORD : page_max;
    }
    if (r->cap < need || (need && !r->out)) {
        return MC_EINVAL;
    }
    return 0;
}

/* One run being encoded: where the next record goes. */
typedef struct {
    xb_cache *c;
    xb_run *r;
    xb_stats *st;
    uint8_t *o;
} run_writer;

/* A record header: the block name on the first record written (QEMU's last_sent_block), else CONTINUE. */
static void put_header(run_writer *w, uint64_t word)
{
    w->o = ram_put_header(w->o, word, w->r->name, w->r->name_len, w->r->name_pending);
    w->r->name_pending = 0;
}

static void put_zero(run_writer *w, uint64_t off, uint64_t key)
{
    put_header(w, off | RAM_SAVE_FLAG_ZERO);
    *w->o++ = 0;
    w->st->zero++;
    if (w->r->started) {
        /* xbzrle_cache_zero_page: the destination now holds zeros; refusal is harmless */
        cache_insert(w->c, key, NULL, w->r->generation);
    }
}

static void put_page(run_writer *w, uint64_t off, const uint8_t *src)
{
    put_header(w, off | RAM_SAVE_FLAG_PAGE);
    memcpy(w->o, src, PS);
    w->o += PS;
    w->st->normal++;
}

static void put_xbzrle(run_writer *w, uint64_t off, const uint8_t *enc, int n)
{
    uint8_t *start = w->o;
    put_header(w, off | RAM_SAVE_FLAG_XBZRLE);
    *w->o++ = RAM_ENCODING_FLAG_XBZRLE;
    *w->o++ = (uint8_t)(n >> 8);
    *w->o++ = (uint8_t)n;
    memcpy(w->o, enc, (size_t)n);
    w->o += n;
    w->st->bytes += (uint64_t)(w->o - start) - 8; /* QEMU leaves out the be64 word */
    w->st->encoded += (uint64_t)n;
    w->st->xbzrle++;
}

/* A page in the cache: encoded against the cached copy (identical: nothing is written). */
static void put_hit(run_writer *w, uint64_t off, uint8_t *cached, const uint8_t *src)
{
    uint8_t snap[MC_PAGE_SIZE], enc[MC_PAGE_SIZE];
    w->st->pages++;
    memcpy(snap, src, PS); /* the guest may keep writing: encode and send one snapshot */
    int n = xb_encode_page(cached, snap, enc);
    if (n == 0) {
        w->st->skipped++;
        return;
    }
    if (!w->r->last_stage) {
        memcpy(cached, snap, PS); /* the cache follows what is sent, also on overflow */
    }
    if (n > 0) {
        put_xbzrle(w, off, enc, n);
        return;
    }
    w->st->overflow++;
    w->st->bytes += PS;
    put_page(w, off, snap);
}

/* A non-zero page once XBZRLE has started: a hit is encoded, a miss is cached and sent whole. */
static void put_started(run_writer *w, uint64_t off, uint64_t key, const uint8_t *src)
{
    uint8_t *slot = slot_data(w->c, slot_of(w->c, key));
    if (xb_cache_is_cached(w->c, key, w->r->generation)) {
        put_hit(w, off, slot, src);
        return;
    }
    w->st->cache_miss++;
    /* send the cached copy so that the cache holds exactly what the destination got */
    if (!w->r->last_stage && cache_insert(w->c, key, src, w->r->generation) == 0) {
        src = slot;
    }
    put_page(w, off, src);
}

int64_t xb_encode_run(xb_cache *c, xb_run *run, xb_stats *stats)
{
    if (run_check(c, run) != 0) {
        return MC_EINVAL; /* the cache, the stats and run->name_pending are untouched */
    }
    if (run->npages == 0) {
        return 0;
    }
    xb_stats dummy = {0};
    run_writer w = {c, run, stats ? stats : &dummy, run->out};
    const uint8_t *host = mc_block_host(run->block);
    for (uint64_t i = 0; i < run->npages; i++) {
        uint64_t off = (run->page + i) * PS;
        uint64_t key = run->key_base + off;
        if (run->zero_map[i]) {
            put_zero(&w, off, key);
        } else if (run->started) {
            put_started(&w, off, key, host + off);
        } else {
            put_page(&w, off, host + off);
        }
    }
    w.st->transferred += (uint64_t)(w.o - run->out);
    return (int64_t)(w.o - run->out);
}
