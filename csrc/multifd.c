/* multifd: page gathering and scattering of multifd packets. See multifd.h. */
#include "multifd.h"
#include "iov.h"
#include "ram_flags.h"

#include <string.h>

int mf_fill_packet(mc_block *b, const uint64_t *pages, uint64_t n, uint64_t normal, uint8_t *table,
                   uint8_t *data)
{
    uint64_t npages = mc_block_pages(b);
    if (normal > n || n > MF_MAX_PAGES) {  /* callers size table and data for one packet */
        return MC_EINVAL;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (pages[i] >= npages) {
            return MC_EINVAL;
        }
    }
    const uint8_t *host = mc_block_host(b);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = pages[i] << MC_PAGE_BITS;
        ram_put_be64(table + 8 * i, off);
        if (i < normal && data) {
            memcpy(data + i * MC_PAGE_SIZE, host + off, MC_PAGE_SIZE);
        }
    }
    return 0;
}

int64_t mf_apply_packet(mc_block *b, uint64_t limit, const uint8_t *table, uint64_t n, uint64_t normal,
                        const uint8_t *data, uint8_t *received)
{
    uint64_t size = mc_block_size(b);
    if (limit > size) {
        limit = size;
    }
    uint8_t *host = mc_block_host(b);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = ram_get_be64(table + 8 * i);
        if (off >= limit || (off & (MC_PAGE_SIZE - 1))) {
            return -(int64_t)(MF_BADOFF_BASE + i);
        }
        uint64_t page = off >> MC_PAGE_BITS;
        if (i < normal) {
            memcpy(host + off, data + i * MC_PAGE_SIZE, MC_PAGE_SIZE);
        } else if (received[page] && !mc_is_zero(host + off, MC_PAGE_SIZE)) {
            memset(host + off, 0, MC_PAGE_SIZE);
        }
        received[page] = 1;
    }
    return 0;
}

int64_t mf_send_packet(mc_block *b, const uint64_t *pages, uint64_t normal, const uint8_t *hdr,
                       uint64_t hdr_len, int fd, int wake_fd)
{
    if (normal > MF_MAX_PAGES || (normal && (!b || !pages))) {
        return MC_EINVAL;
    }
    uint64_t npages = normal ? mc_block_pages(b) : 0;
    struct iovec iov[MF_MAX_PAGES + 1];
    iov[0].iov_base = (void *)hdr;
    iov[0].iov_len = hdr_len;
    uint8_t *host = normal ? mc_block_host(b) : NULL;
    for (uint64_t i = 0; i < normal; i++) {
        if (pages[i] >= npages) {
            return MC_EINVAL;
        }
        iov[1 + i].iov_base = host + (pages[i] << MC_PAGE_BITS);
        iov[1 + i].iov_len = MC_PAGE_SIZE;
    }
    return writev_all(fd, wake_fd, iov, (int)normal + 1);
}

int64_t mf_recv_packet(mc_block *b, uint64_t limit, const uint8_t *table, uint64_t n, uint64_t normal,
                       int fd, int wake_fd, uint8_t *received)
{
    uint64_t size = mc_block_size(b);
    if (limit > size) {
        limit = size;
    }
    if (normal > n || n > MF_MAX_PAGES) {
        return MC_EINVAL;
    }
    for (uint64_t i = 0; i < n; i++) {  /* every offset checked before anything is written */
        uint64_t off = ram_get_be64(table + 8 * i);
        if (off >= limit || (off & (MC_PAGE_SIZE - 1))) {
            return -(int64_t)(MF_BADOFF_BASE + i);
        }
    }
    uint8_t *host = mc_block_host(b);
    struct iovec iov[MF_MAX_PAGES];
    for (uint64_t i = 0; i < normal; i++) {
        iov[i].iov_base = host + ram_get_be64(table + 8 * i);
        iov[i].iov_len = MC_PAGE_SIZE;
    }
    int64_t r = normal ? readv_all(fd, wake_fd, iov, (int)normal) : 0;
    if (r < 0) {
        return r;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = ram_get_be64(table + 8 * i);
        uint64_t page = off >> MC_PAGE_BITS;
        if (i >= normal && received[page] && !mc_is_zero(host + off, MC_PAGE_SIZE)) {
            memset(host + off, 0, MC_PAGE_SIZE);
        }
        received[page] = 1;
    }
    return 0;
}
