/* Deterministic pseudo-random bytes for the kernel NBD e2e test.
 *
 * gen SEED SIZE   writes SIZE bytes to stdout: MT19937 seeded with init_by_array({SEED}),
 * each 32-bit output stored little-endian. This is exactly Python's
 * random.Random(SEED).randbytes(SIZE) for SEED < 2**32 and SIZE % 4 == 0, so the host computes
 * the expected checksums without running this program.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define N 624
#define M 397
static uint32_t mt[N];
static int mti = N + 1;

static void init_genrand(uint32_t s) {
    mt[0] = s;
    for (mti = 1; mti < N; mti++)
        mt[mti] = 1812433253U * (mt[mti - 1] ^ (mt[mti - 1] >> 30)) + (uint32_t)mti;
}

static void init_by_array(const uint32_t *key, int len) {
    int i = 1, j = 0, k = N > len ? N : len;
    init_genrand(19650218U);
    for (; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525U)) + key[j] + (uint32_t)j;
        i++; j++;
        if (i >= N) { mt[0] = mt[N - 1]; i = 1; }
        if (j >= len) j = 0;
    }
    for (k = N - 1; k; k--) {
        mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941U)) - (uint32_t)i;
        i++;
        if (i >= N) { mt[0] = mt[N - 1]; i = 1; }
    }
    mt[0] = 0x80000000U;
}

static uint32_t genrand(void) {
    static const uint32_t mag01[2] = {0, 0x9908b0dfU};
    uint32_t y;
    if (mti >= N) {
        int kk;
        for (kk = 0; kk < N - M; kk++) {
            y = (mt[kk] & 0x80000000U) | (mt[kk + 1] & 0x7fffffffU);
            mt[kk] = mt[kk + M] ^ (y >> 1) ^ mag01[y & 1];
        }
        for (; kk < N - 1; kk++) {
            y = (mt[kk] & 0x80000000U) | (mt[kk + 1] & 0x7fffffffU);
            mt[kk] = mt[kk + (M - N)] ^ (y >> 1) ^ mag01[y & 1];
        }
        y = (mt[N - 1] & 0x80000000U) | (mt[0] & 0x7fffffffU);
        mt[N - 1] = mt[M - 1] ^ (y >> 1) ^ mag01[y & 1];
        mti = 0;
    }
    y = mt[mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= y >> 18;
    return y;
}

int main(int argc, char **argv) {
    static unsigned char buf[1 << 16];
    if (argc != 3) { fprintf(stderr, "usage: gen SEED SIZE\n"); return 2; }
    uint32_t key = (uint32_t)strtoul(argv[1], NULL, 0);
    unsigned long long left = strtoull(argv[2], NULL, 0);
    if (left % 4) { fprintf(stderr, "gen: SIZE must be a multiple of 4\n"); return 2; }
    init_by_array(&key, 1);
    while (left) {
        size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
        for (size_t i = 0; i < n; i += 4) {
            uint32_t r = genrand();
            buf[i] = r; buf[i + 1] = r >> 8; buf[i + 2] = r >> 16; buf[i + 3] = r >> 24;
        }
        for (size_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, n - off);
            if (w <= 0) { perror("gen: write"); return 1; }
            off += (size_t)w;
        }
        left -= n;
    }
    return 0;
}
