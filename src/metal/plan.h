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

enum class Pass : int32_t {
  forward = 0,
  backward_dq = 1,
  backward_dkdv = 2,
  backward_preprocess = 3,
  decode_split = 4,  // split-KV decode: partial (out, lse) per key split into the scratch
  decode_merge = 5,  // split-KV decode: log-sum-exp merge of the partials into out, lse
  sparse_expand = 6, // block-sparse: the lists expanded to one state per (query block, key block)
};
inline constexpr Pass kAllPasses[] = {Pass::forward,       Pass::backward_dq,
                                      Pass::backward_dkdv, Pass::backward_preprocess,
                                      Pass::decode_split,  Pass::decode_merge,
                                      Pass::sparse_expand};

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
  bool kv_cache = false;  // seqused_k / cache_batch_idx / cache_leftpad / block_table (forward)
  bool sparse = false;    // block-sparse lists
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
// Stable, file-name-safe name of the key, e.g. "a7_f16_d64_v64_m0_b1a0s0p0v0"
// (then "_kv" with the KV cache, "_bs" with the block-sparse lists).
std::string key_name(const KernelKey& key);
// The specialisation as (NAME, VALUE) preprocessor defines.
std::vector<std::pair<std::string, std::string>> kernel_defines(const KernelConfig& c);

// Threadgroup memory a kernel of pass `pass` declares under config c (bytes,
// each array rounded to 16 bytes).
size_t threadgroup_bytes(Pass pass, const KernelConfig& c);
// Threads per threadgroup of pass `pass`: what the planner dispatches and
// what the kernel declares as [[max_total_threads_per_threadgroup(N)]]
// (N = the define threads_define(pass), emitted by kernel_defines()).
uint32_t threads_per_threadgroup(Pass pass, const KernelConfig& c);
const char* threads_define(Pass pass);
// Function name of the kernel of `pass` in fsdpa_attention.metal.
const char* kernel_name(Pass pass);

struct Dispatch {
  const char* kernel;        // function name in fsdpa_attention.metal (kernel_name(pass))
  Pass pass;
  uint32_t grid[3];          // threadgroups per grid
  uint32_t threads[3];       // threads per threadgroup
  size_t threadgroup_memory; // bytes declared by the kernel (static)
};

// Split-KV decode choice of a forward call. splits == 0: the normal forward
// kernel (reason says why); splits >= 1: the split and merge passes, keys
// [s * keys_per_split, (s + 1) * keys_per_split) in split s.
struct DecodeSplit {
  int32_t splits = 0;
  int32_t keys_per_split = 0;
  const char* reason = "";
};
// Pure function of the validated call (heuristics.h): splits when seqlen_q
// is small, the keys long and the (batch, head) pairs too few to fill the
// GPU, for every feature the split kernel supports (all but varlen).
DecodeSplit choose_decode_split(const AttnParams& p);

struct Plan {
  KernelConfig config;
  FsdpaMetalArgs args;
  std::vector<Dispatch> dispatches;  // encode in order, one encoder, with barriers between
  // float32 scratch the host allocates and binds at FSDPA_BUF_SCRATCH
  // (uninitialised is fine): backward: Delta; split decode: the partials.
  int64_t scratch_elements = 0;
  // int32 scratch bound at FSDPA_BUF_SPARSE_STATE (block-sparse: the
  // expanded lists, written by the plan's first pass).
  int64_t sparse_state_elements = 0;
  std::string reason;  // why these kernels (split decode or not)
};

Plan plan_forward(const AttnParams& p, GpuFamily family);  // choose_decode_split(p) decides
// The forward with a given split choice (tests force splits on small shapes).
Plan plan_forward_with(const AttnParams& p, GpuFamily family, const DecodeSplit& split);
// Throws for a KV-cache call (the KV-cache parameters are forward only).
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
