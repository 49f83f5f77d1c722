/* Measures the machine's bf16 dot-product peaks (GFLOP/s, 2 per multiply-add)
 * on every core: AVX512_BF16 vdpbf16ps (16 independent chains of 512-bit
 * pair dot products) and AMX-BF16 tdpbf16ps (4 independent 16x16 fp32 tile
 * accumulators). Compiled by bench_cpu_sweep.py with -O2 (the instructions
 * are enabled per function); prints "dpbf16 X" and "amx Y", 0 where the CPU
 * or the OS lacks the unit. x86-64 Linux only. */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ITERS 20000000L

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define DP(i) a##i = _mm512_dpbf16_ps(a##i, x, y)
__attribute__((target("avx512f,avx512bf16"))) static void* dpbf16(void* out) {
  __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2),
         a3 = _mm512_set1_ps(3), a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5),
         a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7), a8 = _mm512_set1_ps(8),
         a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11),
         a12 = _mm512_set1_ps(12), a13 = _mm512_set1_ps(13), a14 = _mm512_set1_ps(14),
         a15 = _mm512_set1_ps(15);
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  const __m512bh y = (__m512bh)_mm512_set1_epi32(0x33003300);
  const double t0 = now();
  for (long i = 0; i < ITERS; ++i) {
    DP(0); DP(1); DP(2); DP(3); DP(4); DP(5); DP(6); DP(7);
    DP(8); DP(9); DP(10); DP(11); DP(12); DP(13); DP(14); DP(15);
    /* Keeps the 16 chains separate (see fma_peak.c). */
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5),
                     "+v"(a6), "+v"(a7));
    __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13),
                     "+v"(a14), "+v"(a15));
  }
  const double dt = now() - t0;
  float sink[16];
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                                     _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
  _mm512_storeu_ps(sink, s);
  /* 16 chains x 16 lanes x 2 products x 2 FLOP */
  *(double*)out = 16.0 * 16 * 2 * 2 * ITERS / dt / 1e9 + 0.0 * sink[0];
  return NULL;
}

struct __attribute__((aligned(64))) tilecfg {
  unsigned char palette, start_row, reserved[14];
  unsigned short colsb[16];
  unsigned char rows[16];
};

__attribute__((target("amx-tile,amx-bf16"))) static void* amx(void* out) {
  static char buf[2 * 1024] __attribute__((aligned(64)));
  struct tilecfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
  _tile_loadd(4, buf, 64);
  _tile_loadd(5, buf, 64);
  _tile_loadd(6, buf, 64);
  _tile_loadd(7, buf, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const long n = ITERS / 16;
  const double t0 = now();
  for (long i = 0; i < n; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const double dt = now() - t0;
  _tile_stored(0, buf, 64);
  _tile_release();
  /* 4 tiles x 16 x 16 outputs x 32 products x 2 FLOP */
  *(double*)out = 4.0 * 16 * 16 * 32 * 2 * n / dt / 1e9;
  return NULL;
}

static double on_threads(void* (*fn)(void*), int n) {
  pthread_t th[256];
  double gf[256], total = 0;
  for (int i = 0; i < n; ++i) pthread_create(&th[i], NULL, fn, &gf[i]);
  for (int i = 0; i < n; ++i) {
    pthread_join(th[i], NULL);
    total += gf[i];
  }
  return total;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 1;
  unsigned a, b, c, d;
  int has_dp = 0, has_amx = 0;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) has_dp = (a >> 5) & 1; /* AVX512_BF16 */
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d))
    has_amx = ((d >> 22) & 1) && ((d >> 24) & 1) && /* Linux: ask for the tile state */
              syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
  printf("dpbf16 %.1f\n", has_dp ? on_threads(dpbf16, n) : 0.0);
  printf("amx %.1f\n", has_amx ? on_threads(amx, n) : 0.0);
  return 0;
}
