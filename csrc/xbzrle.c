/* xbzrle: XBZRLE page cache, delta encoder and record encoder (source side). See xbzrle.h. */
#define _GNU_SOURCE
#include "xbzrle.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PS ((uint32_t)MC_PAGE_SIZE)
/* Slot tags: key | 1 for a used slot, 0 for an empty one (keys are page-aligned), so that a
 * calloc'ed tag array needs no initialisation pass. */
#define TAG(key) ((key) | 1)

#define FLAG_ZERO 0x02u
#define FLAG_PAGE 0x08u
#define FLAG_CONTINUE 0x20u
#define FLAG_XBZRLE 0x40u
#define ENCODING_FLAG_XBZRLE 0x01u

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

static inline uint8_t *put_be64(uint8_t *o, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        *o++ = (uint8_t)(v >> (i * 8));
    }
    return o;
}

/* Record header: the block name on the first record written (QEMU's last_sent_block), else CONTINUE. */
static inline uint8_t *put_header(uint8_t *o, uint64_t word, const uint8_t *name, uint64_t name_len,
                                  int *name_pending)
{
    if (*name_pending) {
        o = put_be64(o, word);
        *o++ = (uint8_t)name_len;
        memcpy(o, name, name_len);
        *name_pending = 0;
        return o + name_len;
    }
    return put_be64(o, word | FLAG_CONTINUE);
}

int64_t xb_encode_run(xb_cache *c, mc_block *b, uint64_t key_base, uint64_t page, uint64_t npages,
                      const uint8_t *zero_map, const uint8_t *name, uint64_t name_len, int *name_pending,
                      uint64_t generation, int started, int last_stage, uint8_t *out, uint64_t cap,
                      xb_stats *stats)
{
    if (!b || !name_pending || name_len > 255 || (*name_pending && !name) || (started && !c)) {
        return MC_EINVAL;
    }
    uint64_t pages = mc_block_pages(b);
    if (page > pages || npages > pages - page || (npages && !zero_map)) {
        return MC_EINVAL;
    }
    if ((key_base & (PS - 1)) || key_base > UINT64_MAX - pages * PS) {
        return MC_EINVAL; /* keys must be page-aligned and not wrap */
    }
    /* Checked up front so that an error leaves the cache, the stats and *name_pending untouched. */
    uint64_t need = *name_pending ? 1 + name_len : 0;
    uint64_t page_max = started ? XB_RECORD_MAX : 8 + PS;
    for (uint64_t i = 0; i < npages; i++) {
        need += zero_map[i] ? XB_ZERO_RECORD : page_max;
    }
    if (cap < need || (need && !out)) {
        return MC_EINVAL;
    }
    if (npages == 0) {
        return 0;
    }

    xb_stats dummy;
    xb_stats *st = stats ? stats : &dummy;
    const uint8_t *host = mc_block_host(b);
    uint8_t snap[MC_PAGE_SIZE], enc[MC_PAGE_SIZE];
    uint8_t *o = out;
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t off = (page + i) * PS;
        uint64_t key = key_base + off;
        const uint8_t *src = host + off;
        if (zero_map[i]) {
            o = put_header(o, off | FLAG_ZERO, name, name_len, name_pending);
            *o++ = 0;
            st->zero++;
            if (started) {
                /* xbzrle_cache_zero_page: the destination now holds zeros; refusal is harmless */
                cache_insert(c, key, NULL, generation);
            }
            continue;
        }
        if (started) {
            uint64_t s = slot_of(c, key);
            if (!xb_cache_is_cached(c, key, generation)) {
                st->cache_miss++;
                /* send the cached copy so that the cache holds exactly what the destination got */
                if (!last_stage && cache_insert(c, key, src, generation) == 0) {
                    src = slot_data(c, s);
                }
            } else {
                st->pages++;
                uint8_t *cached = slot_data(c, s);
                memcpy(snap, src, PS); /* the guest may keep writing: encode and send one snapshot */
                int n = xb_encode_page(cached, snap, enc);
                if (n == 0) {
                    st->skipped++;
                    continue;
                }
                if (!last_stage) {
                    memcpy(cached, snap, PS); /* the cache follows what is sent, also on overflow */
                }
                if (n > 0) {
                    uint8_t *start = o;
                    o = put_header(o, off | FLAG_XBZRLE, name, name_len, name_pending);
                    *o++ = ENCODING_FLAG_XBZRLE;
                    *o++ = (uint8_t)(n >> 8);
                    *o++ = (uint8_t)n;
                    memcpy(o, enc, (size_t)n);
                    o += n;
                    st->bytes += (uint64_t)(o - start) - 8; /* QEMU leaves out the be64 word */
                    st->encoded += (uint64_t)n;
                    st->xbzrle++;
                    continue;
                }
                st->overflow++;
                st->bytes += PS;
                src = snap;
            }
        }
        o = put_header(o, off | FLAG_PAGE, name, name_len, name_pending);
        memcpy(o, src, PS);
        o += PS;
        st->normal++;
    }
    st->transferred += (uint64_t)(o - out);
    return (int64_t)(o - out);
}
