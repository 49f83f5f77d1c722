// Portability macros for flashsdpa's Metal kernels.
//
// The same .metal sources are compiled by Apple's Metal compiler (at run time
// by the Metal backend) and, in CI, as C++ by the MSL emulation harness
// (tests/metal/emu, docs/metal-emulation.md). The harness needs to see
// threadgroup memory declarations and threadgroup pointers through these
// macros so that it can give every threadgroup its own shared, bounds-checked
// and poisoned storage:
//
//   FSDPA_THREADGROUP(float, tile, 64 * 64);   // threadgroup float tile[64 * 64];
//   FSDPA_TG_PTR(const half) p = tile + off;    // threadgroup const half* p = ...;
//
// Only one-dimensional arrays; T must be a single token or a typedef name.
#ifndef FSDPA_METAL_COMPAT_H
#define FSDPA_METAL_COMPAT_H

#if defined(FSDPA_MSL_EMULATION)
// Compiled by the emulation harness: its shim (fsdpa_msl_emu/shim.h) has
// already defined FSDPA_THREADGROUP and FSDPA_TG_PTR.
#elif defined(__METAL_VERSION__)
#define FSDPA_THREADGROUP(T, name, N) threadgroup T name[N]
#define FSDPA_TG_PTR(T) threadgroup T*
#else
#error "fsdpa_metal_compat.h is for Metal kernel sources (Metal compiler or the MSL emulation harness)"
#endif

#endif  // FSDPA_METAL_COMPAT_H
