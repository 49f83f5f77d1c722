// Prelude for the signature-parsing pass of msl_emu_gen.py: the .metal
// source is only preprocessed (g++ -E) with these definitions, so that kernel
// declarations are easy to find and their [[...]] attributes stay visible.
#define FSDPA_MSL_EMULATION 1
#define __METAL_VERSION__ 310
#define __HAVE_SIMDGROUP_MATRIX__ 1
#define __HAVE_BFLOAT__ 1
#define METAL_FUNC inline
#define kernel __fsdpa_emu_kernel__
#define FSDPA_THREADGROUP(T, name, N) int name
#define FSDPA_TG_PTR(T) T*
