/* Keyed BLAKE3 of many equal-length single-chunk inputs (at most 1024 bytes each), LANES at a time.
 *
 * Written from the BLAKE3 specification (compression function, section 2.2; keyed mode, single
 * chunk, so the chunk's last block is the root). Each step of the compression works on the same
 * state word of LANES inputs side by side, a loop the compiler turns into SIMD instructions. Built
 * and loaded by batchhash.py; its digests are checked against the blake3 package by the tests.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define LANES 8
enum { CHUNK_START = 1, CHUNK_END = 2, ROOT = 8, KEYED_HASH = 16 };

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
static const uint8_t PERMUTATION[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

/* LANES 32-bit words, one per input: the compiler maps each operation to one SIMD instruction. */
typedef uint32_t lanes_t __attribute__((vector_size(4 * LANES)));

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define G(a, b, c, d, x, y)                                   \
    v[a] += v[b] + m[x]; v[d] = ROTR(v[d] ^ v[a], 16);        \
    v[c] += v[d];        v[b] = ROTR(v[b] ^ v[c], 12);        \
    v[a] += v[b] + m[y]; v[d] = ROTR(v[d] ^ v[a], 8);         \
    v[c] += v[d];        v[b] = ROTR(v[b] ^ v[c], 7);

/* Digest i (32 bytes at out + 32 i) = keyed BLAKE3 of the `length` bytes at data + i * stride. */
int walrusfs_hash_many(const uint8_t *data, size_t count, size_t stride, size_t length,
                       const uint8_t key[32], uint8_t *out) {
    if (length > 1024) return -1;
    uint32_t key_words[8];
    memcpy(key_words, key, 32); /* little-endian words: x86 and arm64 are little-endian */
    size_t blocks = length == 0 ? 1 : (length + 63) / 64;
    for (size_t first = 0; first < count; first += LANES) {
        size_t lanes = count - first < LANES ? count - first : LANES;
        lanes_t cv[8], v[16], m[16];
        for (int i = 0; i < 8; i++)
            for (int l = 0; l < LANES; l++) cv[i][l] = key_words[i];
        for (size_t block = 0; block < blocks; block++) {
            size_t offset = 64 * block, block_len = length - offset < 64 ? length - offset : 64;
            for (int l = 0; l < LANES; l++) {
                uint32_t words[16] = {0};
                if ((size_t)l < lanes) memcpy(words, data + (first + l) * stride + offset, block_len);
                for (int w = 0; w < 16; w++) m[w][l] = words[w];
            }
            uint32_t flags = KEYED_HASH | (block == 0 ? CHUNK_START : 0)
                             | (block == blocks - 1 ? CHUNK_END | ROOT : 0);
            for (int i = 0; i < 8; i++) v[i] = cv[i];
            for (int l = 0; l < LANES; l++) {
                for (int i = 0; i < 4; i++) v[8 + i][l] = IV[i];
                v[12][l] = 0; v[13][l] = 0; v[14][l] = (uint32_t)block_len; v[15][l] = flags;
            }
            for (int r = 0; r < 7; r++) {
                G(0, 4, 8, 12, 0, 1) G(1, 5, 9, 13, 2, 3) G(2, 6, 10, 14, 4, 5) G(3, 7, 11, 15, 6, 7)
                G(0, 5, 10, 15, 8, 9) G(1, 6, 11, 12, 10, 11) G(2, 7, 8, 13, 12, 13) G(3, 4, 9, 14, 14, 15)
                lanes_t permuted[16]; /* the next round's message order */
                for (int i = 0; i < 16; i++) permuted[i] = m[PERMUTATION[i]];
                memcpy(m, permuted, sizeof m);
            }
            for (int i = 0; i < 8; i++) cv[i] = v[i] ^ v[i + 8];
        }
        for (size_t l = 0; l < lanes; l++) {
            uint32_t digest[8];
            for (int i = 0; i < 8; i++) digest[i] = cv[i][l];
            memcpy(out + 32 * (first + l), digest, 32);
        }
    }
    return 0;
}
