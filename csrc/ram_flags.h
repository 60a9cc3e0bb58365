/*
 * ram_flags: the RAM section's record flags (QEMU 9.1 migration/ram.c RAM_SAVE_FLAG_*) and the
 * big-endian words records are made of, defined once for every C file that writes or reads them.
 * Internal to csrc/ (not part of the Python binding; emu.migration has the Python definition).
 */
#ifndef RAM_FLAGS_H
#define RAM_FLAGS_H

#include <stdint.h>
#include <string.h>

/* The low bits of a record's be64 word (the page offset is page-aligned, so they are free). */
#define RAM_SAVE_FLAG_FULL 0x01u          /* obsolete, never written */
#define RAM_SAVE_FLAG_ZERO 0x02u          /* a page of one fill byte (u8 follows) */
#define RAM_SAVE_FLAG_MEM_SIZE 0x04u      /* the block list */
#define RAM_SAVE_FLAG_PAGE 0x08u          /* a whole page follows */
#define RAM_SAVE_FLAG_EOS 0x10u           /* end of the section's part */
#define RAM_SAVE_FLAG_CONTINUE 0x20u      /* same block as the previous record: no name follows */
#define RAM_SAVE_FLAG_XBZRLE 0x40u        /* an XBZRLE delta follows */
#define RAM_SAVE_FLAG_HOOK 0x80u          /* obsolete (RDMA hook), never written */
#define RAM_SAVE_FLAG_COMPRESS_PAGE 0x100u /* obsolete (compression), refused */
#define RAM_SAVE_FLAG_MULTIFD_FLUSH 0x200u /* multifd: all channels synced */

/* The XBZRLE record's encoding byte (ENCODING_FLAG_XBZRLE). */
#define RAM_ENCODING_FLAG_XBZRLE 0x01u

/* Writes v big-endian at o; returns o + 8. */
static inline uint8_t *ram_put_be64(uint8_t *o, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        *o++ = (uint8_t)(v >> (i * 8));
    }
    return o;
}

/* The big-endian word at p. */
static inline uint64_t ram_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* A record's header: with_name, the word then the block name (u8 length, bytes: QEMU's
 * last_sent_block differs); else the word with CONTINUE. Returns the end of what was written. */
static inline uint8_t *ram_put_header(uint8_t *o, uint64_t word, const uint8_t *name, uint64_t name_len,
                                      int with_name)
{
    if (!with_name) {
        return ram_put_be64(o, word | RAM_SAVE_FLAG_CONTINUE);
    }
    o = ram_put_be64(o, word);
    *o++ = (uint8_t)name_len;
    memcpy(o, name, name_len);
    return o + name_len;
}

#endif
