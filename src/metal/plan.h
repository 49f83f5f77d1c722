// Portable host planning of the Metal backend: everything about a call that
// is not Objective-C. Which kernels run, their specialisation key and -D
// defines, tile sizes (from heuristics.h), grid and threadgroup sizes, the
// argument block (kernels/fsdpa_metal_args.h) and the assembled MSL source.
// Compiled and unit-tested on every platform; metal_backend.mm (macOS) and
// python/flashsdpa/metal.py encode exactly these dispatches, and the
// emulator tests (tests/metal/attention) execute them.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/attn_params.h"
#include "metal/kernels/fsdpa_metal_args.h"

namespace fsdpa::metal {

// MTLGPUFamilyApple7 = M1 (and A14), Apple8 = M2, Apple9 = M3/M4.
enum class GpuFamily : int32_t { apple7 = 7, apple8 = 8, apple9 = 9 };

enum class Pass : int32_t { forward = 0, backward_dq = 1, backward_dkdv = 2, backward_preprocess = 3 };

struct Tile {
  int32_t parallel = 0;   // rows per threadgroup (query rows; key rows for dK/dV)
  int32_t traversal = 0;  // rows streamed per step
};

// What a compiled library depends on. Two calls with equal keys share one
// library (and its pipelines).
struct KernelKey {
  GpuFamily family = GpuFamily::apple7;
  DType dtype = DType::f32;     // f32, f16, bf16
  int32_t dp = 8, dvp = 8;      // D, Dv rounded up to multiples of 8
  MaskKind mask = MaskKind::none;
  DType mask_dtype = DType::f32;  // additive masks only
  bool band = false, alibi = false, softcap = false, dropout = false, varlen = false;
  bool operator==(const KernelKey&) const = default;
};

struct KernelConfig {
  KernelKey key;
  Tile fwd, dq, dkv;
  int32_t pre_rows = 0;
};

// Key of a validated call (dtype, head dims, mask, features).
KernelKey make_key(const AttnParams& p, GpuFamily family);
// Tiles for a key (heuristics table, fitted to threadgroup memory).
KernelConfig kernel_config(const KernelKey& key);
// Stable, file-name-safe name of the key, e.g. "a7_f16_d64_v64_m0_b1a0s0p0v0".
std::string key_name(const KernelKey& key);
// The specialisation as (NAME, VALUE) preprocessor defines.
std::vector<std::pair<std::string, std::string>> kernel_defines(const KernelConfig& c);

// Threadgroup memory a kernel of pass `pass` declares under config c (bytes,
// each array rounded to 16 bytes).
size_t threadgroup_bytes(Pass pass, const KernelConfig& c);
uint32_t threads_per_threadgroup(Pass pass, const KernelConfig& c);

struct Dispatch {
  const char* kernel;        // function name in fsdpa_attention.metal
  Pass pass;
  uint32_t grid[3];          // threadgroups per grid
  uint32_t threads[3];       // threads per threadgroup
  size_t threadgroup_memory; // bytes declared by the kernel (static)
};

// Scratch buffers the host allocates for a plan.
struct Plan {
  KernelConfig config;
  FsdpaMetalArgs args;
  std::vector<Dispatch> dispatches;  // encode in order, one encoder, with barriers between
  int64_t delta_elements = 0;        // backward: fp32 scratch for Delta
};

Plan plan_forward(const AttnParams& p, GpuFamily family);
Plan plan_backward(const AttnParams& p, GpuFamily family);

// The argument block of a validated call (strides, sizes, semantics).
FsdpaMetalArgs make_args(const AttnParams& p);

// The complete MSL source of a config: the defines, then
// fsdpa_attention.metal with its local #includes (fsdpa_metal_compat.h,
// fsdpa_metal_args.h) inlined, so it compiles from one string
// (newLibraryWithSource / torch.mps.compile_shader). `read` returns the text
// of a file of src/metal/kernels by name.
std::string assemble_source(const KernelConfig& c, const std::function<std::string(const std::string&)>& read);

}  // namespace fsdpa::metal
