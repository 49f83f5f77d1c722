/* Measures the machine's fp32 FMA peak (GFLOP/s) with a tight loop of
 * independent vector FMAs on every core. Compiled with -O2 -march=native by
 * bench_cpu.py; prints one number: the aggregate peak over all threads. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 20000000L

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void* worker(void* out) {
#if defined(__AVX512F__)
  typedef __m512 V;
#define LANES 16
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1 _mm512_set1_ps
#elif defined(__AVX2__) && defined(__FMA__)
  typedef __m256 V;
#define LANES 8
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1 _mm256_set1_ps
#else
#error "fma_peak.c needs AVX2+FMA or AVX-512"
#endif
  /* 16 independent accumulators hide the FMA latency on every x86 core.
   * They start from different values and all pass through an empty asm
   * statement each iteration: identical chains would let the compiler
   * merge them (an earlier version of this file ran 7 FMAs per iteration
   * while counting 12, overstating the peak by 12/7). */
  V a0 = SET1(1.000f), a1 = SET1(1.001f), a2 = SET1(1.002f), a3 = SET1(1.003f),
    a4 = SET1(1.004f), a5 = SET1(1.005f), a6 = SET1(1.006f), a7 = SET1(1.007f),
    a8 = SET1(1.008f), a9 = SET1(1.009f), a10 = SET1(1.010f), a11 = SET1(1.011f),
    a12 = SET1(1.012f), a13 = SET1(1.013f), a14 = SET1(1.014f), a15 = SET1(1.015f);
  const V m = SET1(0.999999f), c = SET1(1e-7f);
  const double t0 = now();
  for (long i = 0; i < ITERS; ++i) {
    a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);
    a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);
    a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);
    a12 = FMA(a12, m, c); a13 = FMA(a13, m, c); a14 = FMA(a14, m, c); a15 = FMA(a15, m, c);
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),
                     "+v"(a6), "+v"(a7));
    __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13),
                     "+v"(a14), "+v"(a15));
  }
  const double dt = now() - t0;
  float sink[LANES];
  V s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15;
  __builtin_memcpy(sink, &s, sizeof(sink));
  *(double*)out = 16.0 * LANES * 2.0 * ITERS / dt / 1e9 + 0.0 * sink[0];
  return NULL;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 1;
  pthread_t th[256];
  double gf[256], total = 0;
  for (int i = 0; i < n; ++i) pthread_create(&th[i], NULL, worker, &gf[i]);
  for (int i = 0; i < n; ++i) {
    pthread_join(th[i], NULL);
    total += gf[i];
  }
  printf("%.1f\n", total);
  return 0;
}
