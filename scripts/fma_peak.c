/* The machine's fp32 FMA peak: 16 independent zmm FMA chains per thread, on 1 and 2 threads.
 * The ceiling against which the GEMM is judged in BENCHMARKS.md (no memory traffic at all).
 *
 *   gcc -O2 -mavx512f -pthread scripts/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 16
#define ITERS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *chains(void *out) {
    __m512 acc[CHAINS];
    const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < ITERS; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    }
    float sum = 0; /* keeps the chains alive */
    for (int i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    *(float *)out = sum;
    return NULL;
}

int main(void) {
    for (int threads = 1; threads <= 2; threads++) {
        pthread_t th[2];
        float out[2];
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, chains, &out[i]);
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double dt = now() - t0;
        double fmas = (double)CHAINS * ITERS; /* zmm FMAs per thread */
        printf("%d thread(s): %.1f GFLOP/s fp32 (%.2f zmm FMAs/ns per thread; checksum %g)\n",
               threads, 32.0 * fmas * threads / dt / 1e9, fmas / dt / 1e9, out[0]);
    }
    return 0;
}
