// The Metal backend's host (macOS only, FLASHSDPA_WITH_METAL): deliberately
// thin. Everything that can be decided without Metal -- kernels, tiles,
// grids, the argument block, the specialisation key and the assembled source
// -- comes from the portable planner (plan.h), which the emulator tests
// execute on Linux. This file only
//   * compiles one MTLLibrary per specialisation key (source + defines,
//     fast math off) and caches it with its pipelines,
//   * binds the tensors' MTLBuffers to the planner's buffer indices and
//     encodes the planner's dispatches in order on one compute encoder,
//   * check_finite on CPU-readable (shared) inputs.
//
// Not run in CI (no Apple hardware there). CI compiles it syntax-only
// against stub Metal headers (tests/metal/macsim) and checks that a macOS
// configure builds it with ARC; see docs/metal.md for what only a Mac shows.
//
// Memory: ARC releases every buffer, option and function object made here
// (the Delta scratch of a backward call with the call's autorelease pool).
//
// DLPack on kDLMetal: DLTensor.data is the id<MTLBuffer>; the element
// offset is DLTensor.byte_offset. The core currently folds byte_offset into
// the data pointer (validate.cpp), which is wrong for Metal handles, so this
// backend requires byte_offset == 0 until the core keeps the two apart
// (reported to the lead).
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#if !__has_feature(objc_arc)
#error "metal_backend.mm must be compiled with -fobjc-arc (see src/metal/CMakeLists.txt)"
#endif

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/backend.h"
#include "core/error.h"
#include "core/validate.h"
#include "metal/finite.h"
#include "metal/plan.h"

namespace fsdpa::metal {

std::string embedded_kernel_file(const std::string& name);  // generated: metal_sources.cpp

namespace {

struct MetalState {
  id<MTLDevice> device = nil;
  id<MTLCommandQueue> queue = nil;
  id<MTLBuffer> dummy = nil;  // bound at the indices a call leaves empty; one per process
  GpuFamily family = GpuFamily::apple7;
  std::mutex mu;
  std::unordered_map<std::string, id<MTLLibrary>> libraries;              // by key name
  std::unordered_map<std::string, id<MTLComputePipelineState>> pipelines;  // by key name + "/" + kernel
};

MetalState& state() {
  static MetalState* s = [] {
    auto* st = new MetalState;
    st->device = MTLCreateSystemDefaultDevice();
    if (st->device != nil) {
      st->queue = [st->device newCommandQueue];
      st->dummy = [st->device newBufferWithLength:16 options:MTLResourceStorageModePrivate];
      if ([st->device supportsFamily:MTLGPUFamilyApple9]) st->family = GpuFamily::apple9;
      else if ([st->device supportsFamily:MTLGPUFamilyApple8]) st->family = GpuFamily::apple8;
      else st->family = GpuFamily::apple7;
    }
    return st;
  }();
  return *s;
}

bool metal_available() {
  MetalState& s = state();
  return s.device != nil && [s.device supportsFamily:MTLGPUFamilyApple7];
}

// Pipeline of `kernel` under config c, compiled on first use. On failure:
// nil, *err the reason and *code FSDPA_ERROR_INTERNAL (compilation) or
// FSDPA_ERROR_UNSUPPORTED (a GPU the kernels were not written for).
id<MTLComputePipelineState> pipeline(const KernelConfig& c, const char* kernel, std::string* err, fsdpa_status* code) {
  *code = FSDPA_ERROR_INTERNAL;
  MetalState& s = state();
  const std::string key = key_name(c.key);
  std::lock_guard<std::mutex> lock(s.mu);
  auto pit = s.pipelines.find(key + "/" + kernel);
  if (pit != s.pipelines.end()) return pit->second;
  id<MTLLibrary> lib = nil;
  auto lit = s.libraries.find(key);
  if (lit != s.libraries.end()) {
    lib = lit->second;
  } else {
    const std::string src = assemble_source(c, embedded_kernel_file);
    MTLCompileOptions* opts = [MTLCompileOptions new];
    opts.languageVersion = MTLLanguageVersion3_0;
    // The kernels rely on IEEE infinities (masked scores, empty rows) and
    // precise exp/log. From macOS 15, mathMode replaces fastMathEnabled and
    // the function precision is a separate setting whose default is fast.
    if (@available(macOS 15.0, *)) {
      opts.mathMode = MTLMathModeSafe;
      opts.mathFloatingPointFunctions = MTLMathFloatingPointFunctionsPrecise;
    } else {
      opts.fastMathEnabled = NO;
    }
    NSError* e = nil;
    lib = [s.device newLibraryWithSource:[NSString stringWithUTF8String:src.c_str()] options:opts error:&e];
    if (lib == nil) {
      *err = "compiling the Metal library " + key + ": " + (e ? e.localizedDescription.UTF8String : "unknown error");
      return nil;
    }
    s.libraries[key] = lib;
  }
  id<MTLFunction> fn = [lib newFunctionWithName:[NSString stringWithUTF8String:kernel]];
  NSError* e = nil;
  id<MTLComputePipelineState> pso = fn ? [s.device newComputePipelineStateWithFunction:fn error:&e] : nil;
  if (pso == nil) {
    *err = std::string("creating the pipeline ") + kernel + ": " + (e ? e.localizedDescription.UTF8String : "no such function");
    return nil;
  }
  // The kernels assume 32-lane simdgroups (lane layout of simdgroup_matrix,
  // row reductions) and static threadgroup arrays within the device limit.
  *code = FSDPA_ERROR_UNSUPPORTED;
  if (pso.threadExecutionWidth != 32) {
    *err = std::string("the GPU runs ") + kernel + " with " + std::to_string((unsigned long)pso.threadExecutionWidth) +
           "-wide simdgroups; the kernels need 32";
    return nil;
  }
  if (pso.staticThreadgroupMemoryLength > s.device.maxThreadgroupMemoryLength) {
    *err = std::string(kernel) + " declares " + std::to_string((unsigned long)pso.staticThreadgroupMemoryLength) +
           " bytes of threadgroup memory, the GPU has " +
           std::to_string((unsigned long)s.device.maxThreadgroupMemoryLength);
    return nil;
  }
  s.pipelines[key + "/" + kernel] = pso;
  return pso;
}

// The buffers bound to FSDPA_BUF_* (nil = bind a dummy).
struct Bindings {
  id<MTLBuffer> buf[FSDPA_NUM_BUFFERS] = {};
};

id<MTLBuffer> as_buffer(const void* p) { return (__bridge id<MTLBuffer>)const_cast<void*>(p); }

fsdpa_status run_plan(const Plan& plan, Bindings& b, void* stream) {
  MetalState& s = state();
  std::string err;
  constexpr size_t kMaxDispatches = 6;
  id<MTLComputePipelineState> psos[kMaxDispatches] = {};
  if (plan.dispatches.size() > kMaxDispatches) return set_error(FSDPA_ERROR_INTERNAL, "metal: too many dispatches");
  if (plan.dispatches.empty()) return FSDPA_OK;
  for (size_t i = 0; i < plan.dispatches.size(); ++i) {
    fsdpa_status code = FSDPA_OK;
    psos[i] = pipeline(plan.config, plan.dispatches[i].kernel, &err, &code);
    if (psos[i] == nil) return set_error(code, "metal: %s", err.c_str());
    const NSUInteger threads = plan.dispatches[i].threads[0];
    if (threads > psos[i].maxTotalThreadsPerThreadgroup)
      return set_error(FSDPA_ERROR_UNSUPPORTED, "metal: %s needs %lu threads per threadgroup, the pipeline allows %lu",
                       plan.dispatches[i].kernel, (unsigned long)threads,
                       (unsigned long)psos[i].maxTotalThreadsPerThreadgroup);
  }
  id<MTLBuffer> dummy = s.dummy;
  if (dummy == nil) return set_error(FSDPA_ERROR_OUT_OF_MEMORY, "metal: the 16-byte placeholder buffer");
  id<MTLCommandQueue> queue = stream ? (__bridge id<MTLCommandQueue>)stream : s.queue;
  id<MTLCommandBuffer> cb = [queue commandBuffer];
  id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];  // serial dispatch: each sees the previous one's writes
  [enc setBytes:&plan.args length:sizeof(plan.args) atIndex:FSDPA_BUF_ARGS];
  for (int i = 1; i < FSDPA_NUM_BUFFERS; ++i) [enc setBuffer:(b.buf[i] ? b.buf[i] : dummy) offset:0 atIndex:i];
  for (size_t i = 0; i < plan.dispatches.size(); ++i) {
    const Dispatch& d = plan.dispatches[i];
    if (i > 0) [enc memoryBarrierWithScope:MTLBarrierScopeBuffers];
    [enc setComputePipelineState:psos[i]];
    [enc dispatchThreadgroups:MTLSizeMake(d.grid[0], d.grid[1], d.grid[2])
        threadsPerThreadgroup:MTLSizeMake(d.threads[0], d.threads[1], d.threads[2])];
  }
  [enc endEncoding];
  [cb commit];
  [cb waitUntilCompleted];
  if (cb.status != MTLCommandBufferStatusCompleted)
    return set_error(FSDPA_ERROR_INTERNAL, "metal: command buffer failed: %s",
                     cb.error ? cb.error.localizedDescription.UTF8String : "unknown error");
  return FSDPA_OK;
}

// check_finite on the inputs the CPU can read (shared storage, the default
// for MTLBuffers on Apple silicon), after the queue's earlier work is done.
// Private-storage inputs are not scanned (docs/metal.md).
fsdpa_status check_inputs(const AttnParams& p, const Bindings& b, void* stream, bool backward) {
  if (!p.check_finite) return FSDPA_OK;
  id<MTLCommandQueue> queue = stream ? (__bridge id<MTLCommandQueue>)stream : state().queue;
  id<MTLCommandBuffer> sync = [queue commandBuffer];
  [sync commit];
  [sync waitUntilCompleted];
  const int which[] = {FSDPA_BUF_Q, FSDPA_BUF_K, FSDPA_BUF_V, FSDPA_BUF_DOUT};
  for (int i = 0; i < (backward ? 4 : 3); ++i) {
    id<MTLBuffer> buf = b.buf[which[i]];
    if (buf == nil || buf.storageMode != MTLStorageModeShared) continue;
    const fsdpa_status st = check_finite_input(p, which[i], buf.contents);
    if (st != FSDPA_OK) return st;
  }
  return FSDPA_OK;
}

void bind_common(const AttnParams& p, Bindings& b) {
  b.buf[FSDPA_BUF_Q] = as_buffer(p.q);
  b.buf[FSDPA_BUF_K] = as_buffer(p.k);
  b.buf[FSDPA_BUF_V] = as_buffer(p.v);
  b.buf[FSDPA_BUF_OUT] = p.out ? as_buffer(p.out) : nil;
  b.buf[FSDPA_BUF_LSE] = p.lse ? as_buffer(p.lse) : nil;
  b.buf[FSDPA_BUF_MASK] = p.mask ? as_buffer(p.mask) : nil;
  b.buf[FSDPA_BUF_ALIBI] = p.alibi ? as_buffer(p.alibi) : nil;
  b.buf[FSDPA_BUF_CU_Q] = p.cu_seqlens_q ? as_buffer(p.cu_seqlens_q) : nil;
  b.buf[FSDPA_BUF_CU_K] = p.cu_seqlens_k ? as_buffer(p.cu_seqlens_k) : nil;
  b.buf[FSDPA_BUF_SEQUSED_K] = p.seqused_k ? as_buffer(p.seqused_k) : nil;
  b.buf[FSDPA_BUF_CACHE_BATCH_IDX] = p.cache_batch_idx ? as_buffer(p.cache_batch_idx) : nil;
  b.buf[FSDPA_BUF_CACHE_LEFTPAD] = p.cache_leftpad ? as_buffer(p.cache_leftpad) : nil;
  b.buf[FSDPA_BUF_BLOCK_TABLE] = p.block_table ? as_buffer(p.block_table) : nil;
  b.buf[FSDPA_BUF_KV_NUM] = p.kv_num ? as_buffer(p.kv_num) : nil;
  b.buf[FSDPA_BUF_KV_IDX] = p.kv_idx ? as_buffer(p.kv_idx) : nil;
  b.buf[FSDPA_BUF_FULL_NUM] = p.full_num ? as_buffer(p.full_num) : nil;
  b.buf[FSDPA_BUF_FULL_IDX] = p.full_idx ? as_buffer(p.full_idx) : nil;
  b.buf[FSDPA_BUF_SPARSE_MASK] = p.sparse_mask ? as_buffer(p.sparse_mask) : nil;
}

// The KV-cache values are the caller's contract on GPUs (flashsdpa.h);
// with check_finite = 1 (which synchronises and reads the inputs anyway)
// they are checked as the CPU checks them when the CPU can read them
// (shared storage), so a bad page index is an error naming the argument
// instead of a read of another page.
fsdpa_status check_kv_cache(const AttnParams& p, const Bindings& b) {
  if (!p.check_finite || !uses_kv_cache(p)) return FSDPA_OK;
  AttnParams h = p;
  const int idx[] = {FSDPA_BUF_SEQUSED_K, FSDPA_BUF_CACHE_BATCH_IDX, FSDPA_BUF_CACHE_LEFTPAD, FSDPA_BUF_BLOCK_TABLE,
                     FSDPA_BUF_CU_K};
  const int32_t** field[] = {&h.seqused_k, &h.cache_batch_idx, &h.cache_leftpad, &h.block_table, &h.cu_seqlens_k};
  for (int i = 0; i < 5; ++i) {
    if (*field[i] == nullptr) continue;
    id<MTLBuffer> buf = b.buf[idx[i]];
    if (buf == nil || buf.storageMode != MTLStorageModeShared) return FSDPA_OK;  // not CPU-readable: trusted
    *field[i] = static_cast<const int32_t*>(buf.contents);
  }
  return check_kv_cache_values(h);
}

// The plan's float32 scratch (backward: Delta; split-KV decode: partials)
// and int32 scratch (block-sparse: the expanded lists).
fsdpa_status bind_scratch(const Plan& plan, Bindings& b) {
  if (plan.scratch_elements > 0) {
    const NSUInteger bytes = NSUInteger(plan.scratch_elements) * sizeof(float);
    b.buf[FSDPA_BUF_SCRATCH] = [state().device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
    if (b.buf[FSDPA_BUF_SCRATCH] == nil) return set_error(FSDPA_ERROR_OUT_OF_MEMORY, "metal: float32 scratch");
  }
  if (plan.sparse_state_elements > 0) {
    const NSUInteger bytes = NSUInteger(plan.sparse_state_elements) * sizeof(int32_t);
    b.buf[FSDPA_BUF_SPARSE_STATE] = [state().device newBufferWithLength:bytes options:MTLResourceStorageModePrivate];
    if (b.buf[FSDPA_BUF_SPARSE_STATE] == nil)
      return set_error(FSDPA_ERROR_OUT_OF_MEMORY, "metal: int32 scratch of the block-sparse lists");
  }
  return FSDPA_OK;
}

fsdpa_status forward(const AttnParams& p, void* stream) {
  @autoreleasepool {
    Plan plan;
    try {
      plan = plan_forward(p, state().family);
    } catch (const std::exception& e) {
      return set_error(FSDPA_ERROR_UNSUPPORTED, "metal: %s", e.what());
    }
    Bindings b;
    bind_common(p, b);
    if (const fsdpa_status st = check_inputs(p, b, stream, false); st != FSDPA_OK) return st;
    if (const fsdpa_status st = check_kv_cache(p, b); st != FSDPA_OK) return st;
    if (const fsdpa_status st = bind_scratch(plan, b); st != FSDPA_OK) return st;
    return run_plan(plan, b, stream);
  }
}

fsdpa_status backward(const AttnParams& p, void* stream) {
  @autoreleasepool {
    Plan plan;
    try {
      plan = plan_backward(p, state().family);
    } catch (const std::exception& e) {
      return set_error(FSDPA_ERROR_UNSUPPORTED, "metal: %s", e.what());
    }
    Bindings b;
    bind_common(p, b);
    b.buf[FSDPA_BUF_DOUT] = as_buffer(p.dout);
    b.buf[FSDPA_BUF_DQ] = as_buffer(p.dq);
    b.buf[FSDPA_BUF_DK] = as_buffer(p.dk);
    b.buf[FSDPA_BUF_DV] = as_buffer(p.dv);
    if (const fsdpa_status st = check_inputs(p, b, stream, true); st != FSDPA_OK) return st;
    if (const fsdpa_status st = bind_scratch(plan, b); st != FSDPA_OK) return st;
    return run_plan(plan, b, stream);
  }
}

}  // namespace
}  // namespace fsdpa::metal

namespace fsdpa {
extern const Backend kMetalBackend = {"metal", kDLMetal, &metal::metal_available, &metal::forward,
                                      &metal::backward, nullptr, nullptr, /*block_sparse=*/true};
}  // namespace fsdpa
