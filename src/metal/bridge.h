// Planning for callers that hold Metal tensors without DLPack: PyTorch's MPS
// tensors (python/flashsdpa/metal.py). They describe each tensor (dtype,
// shape, strides) and get back everything needed to run the call with
// torch.mps.compile_shader: the library key and complete source, the
// dispatches in order and the argument block bytes. The call is validated
// exactly as the C ABI validates it (device kDLMetal), so errors carry the
// core's messages.
#pragma once

#include <stdint.h>

#include <array>
#include <string>
#include <vector>

#include "flashsdpa/flashsdpa.h"

namespace fsdpa::metal {

struct TensorDesc {
  bool present = false;
  int32_t dtype = 0;  // 0 float32, 1 float16, 2 bfloat16, 3 float64, 4 bool/uint8, 5 int32
  std::vector<int64_t> shape, strides;  // strides in elements
};

struct BridgePlan {
  std::string key;     // library cache key (key_name of the specialisation)
  std::string source;  // complete MSL source of the library
  std::vector<std::string> kernels;            // in dispatch order
  std::vector<std::array<uint32_t, 3>> grid;   // threadgroups per grid
  std::vector<std::array<uint32_t, 3>> threads;  // threads per threadgroup
  std::string args;    // bytes of FsdpaMetalArgs, bound at buffer 0
  // float32 scratch to allocate and bind at FSDPA_BUF_SCRATCH when > 0
  // (backward: Delta; split-KV decode forward: the partials).
  int64_t scratch_elements = 0;
  // int32 scratch to allocate and bind at FSDPA_BUF_SPARSE_STATE when > 0
  // (block-sparse calls: the expanded lists, written by the first dispatch).
  int64_t sparse_state_elements = 0;
  std::string reason;  // the planner's reason for these kernels (stats / debugging)
};

// tensors[i] describes the tensor bound at buffer index i (FSDPA_BUF_Q ..
// FSDPA_BUF_SPARSE_MASK, see kernels/fsdpa_metal_args.h; the KV-cache
// vectors and block-sparse lists at theirs; the scratch indices are the
// caller's to allocate from the plan); absent ones have present = false. family: 7 (M1), 8 (M2), 9 (M3/M4). Throws
// std::invalid_argument with the validation message on bad input.
BridgePlan plan_for_tensors(bool backward, const fsdpa_params& params, const std::vector<TensorDesc>& tensors,
                            int family);

}  // namespace fsdpa::metal
