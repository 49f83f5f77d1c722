// The C ABI entry points: validate, pick the backend by device, run, and
// turn exceptions into statuses (nothing may unwind through C).
#include <cstring>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <atomic>
#include <mutex>
#include <new>
#include <thread>

#include "core/backend.h"
#include "core/error.h"
#include "core/reference.h"
#include "core/settings.h"
#include "core/validate.h"
#if defined(FLASHSDPA_WITH_CPU)
#include "cpu/thread_pool.h"
#endif
#include "flashsdpa/flashsdpa.h"

namespace fsdpa {
namespace {

template <typename F>
fsdpa_status guarded(F&& f) {
  clear_error();
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return set_error(FSDPA_ERROR_OUT_OF_MEMORY, "out of memory allocating workspace");
  } catch (const std::exception& e) {
    return set_error(FSDPA_ERROR_INTERNAL, "internal error: %s", e.what());
  } catch (...) {
    return set_error(FSDPA_ERROR_INTERNAL, "internal error: unknown exception");
  }
}

// The _msg variants: the call's message copied into the caller's buffer
// before control returns, on the thread that made the call.
fsdpa_status copy_message(fsdpa_status s, char* msg, size_t msg_size) {
  if (msg != nullptr && msg_size > 0) snprintf(msg, msg_size, "%s", s == FSDPA_OK ? "" : last_error());
  return s;
}

fsdpa_status run_on_backend(CallKind kind, const fsdpa_params* params, const CallTensors& t,
                            void* stream) {
  AttnParams p;
  fsdpa_status s = make_attn_params(kind, params, t, &p);
  if (s != FSDPA_OK) return s;
  const Backend* be = find_backend(p.device_type);
  if (be == nullptr)
    return set_error(FSDPA_ERROR_DEVICE,
                     "q: no backend for DLPack device type %d in this build (compiled in: %s)",
                     p.device_type, backend_names());
  if (!be->available())
    return set_error(FSDPA_ERROR_DEVICE, "q: the %s backend is compiled in but no device is present",
                     be->name);
  if ((s = backend_supports(*be, p)) != FSDPA_OK) return s;
  return kind == CallKind::forward ? be->forward(p, stream) : be->backward(p, stream);
}

std::atomic<int> g_cpu_threads{0};

}  // namespace

int cpu_threads_setting() { return g_cpu_threads.load(std::memory_order_relaxed); }

std::mutex g_workspace_mu;
WorkspaceAllocator g_workspace{nullptr, nullptr, nullptr};

WorkspaceAllocator workspace_allocator() {
  std::lock_guard<std::mutex> lock(g_workspace_mu);
  return g_workspace;
}

int cpu_thread_count() {
  if (int n = cpu_threads_setting(); n > 0) return n;
  if (const char* env = getenv("FLASHSDPA_NUM_THREADS")) {
    const int n = atoi(env);
    if (n > 0) return n;
  }
#if defined(FLASHSDPA_WITH_CPU)
  return cpu::default_thread_count();
#else
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
#endif
}

}  // namespace fsdpa

using namespace fsdpa;

extern "C" {

void fsdpa_params_init_sized(fsdpa_params* p, size_t size) {
  if (p == nullptr || size < FSDPA_PARAMS_SIZE_V0_1) return;
  fsdpa_params d{};
  d.scale = NAN;
  d.align = FSDPA_ALIGN_TOP_LEFT;
  d.window_left = -1;
  d.window_right = -1;
  d.check_finite = 1;
  const size_t n = size < sizeof(fsdpa_params) ? size : sizeof(fsdpa_params);
  d.struct_size = static_cast<uint32_t>(n);
  memcpy(static_cast<void*>(p), &d, n);
}

#undef fsdpa_params_init  // the exported function of the first release
void fsdpa_params_init(fsdpa_params* p) { fsdpa_params_init_sized(p, FSDPA_PARAMS_SIZE_V0_1); }

fsdpa_status fsdpa_forward(const fsdpa_params* params, const DLTensor* q, const DLTensor* k,
                           const DLTensor* v, DLTensor* out, DLTensor* lse, void* stream) {
  return guarded([&] {
    CallTensors t;
    t.q = q; t.k = k; t.v = v; t.out = out; t.lse = lse;
    return run_on_backend(CallKind::forward, params, t, stream);
  });
}

fsdpa_status fsdpa_backward(const fsdpa_params* params, const DLTensor* dout, const DLTensor* q,
                            const DLTensor* k, const DLTensor* v, const DLTensor* out,
                            const DLTensor* lse, DLTensor* dq, DLTensor* dk, DLTensor* dv,
                            void* stream) {
  return guarded([&] {
    CallTensors t;
    t.q = q; t.k = k; t.v = v; t.out = out; t.lse = lse;
    t.dout = dout; t.dq = dq; t.dk = dk; t.dv = dv;
    return run_on_backend(CallKind::backward, params, t, stream);
  });
}

fsdpa_status fsdpa_merge_attn_states(const DLTensor* out_a, const DLTensor* lse_a,
                                     const DLTensor* out_b, const DLTensor* lse_b, DLTensor* out,
                                     DLTensor* lse, void* stream) {
  return guarded([&] {
    MergeTensors t;
    t.out_a = out_a; t.lse_a = lse_a; t.out_b = out_b; t.lse_b = lse_b; t.out = out; t.lse = lse;
    MergeParams m;
    fsdpa_status s = make_merge_params(t, &m);
    if (s != FSDPA_OK) return s;
    const Backend* be = find_backend(m.device_type);
    if (be == nullptr || !be->available())
      return set_error(FSDPA_ERROR_DEVICE,
                       "out_a: no available backend for DLPack device type %d (compiled in: %s)",
                       m.device_type, backend_names());
    if (be->merge == nullptr)
      return set_error(FSDPA_ERROR_UNSUPPORTED,
                       "out_a: merge_attn_states is not supported on %s yet", be->name);
    return be->merge(m, stream);
  });
}

fsdpa_status fsdpa_explain(const fsdpa_params* params, int32_t backward, const DLTensor* dout,
                           const DLTensor* q, const DLTensor* k, const DLTensor* v,
                           const DLTensor* out, const DLTensor* lse, const DLTensor* dq,
                           const DLTensor* dk, const DLTensor* dv, char* buf, size_t size) {
  return guarded([&] {
    if (buf != nullptr && size > 0) buf[0] = '\0';
    CallTensors t;
    t.q = q; t.k = k; t.v = v; t.out = out; t.lse = lse;
    if (backward) {
      t.dout = dout; t.dq = dq; t.dk = dk; t.dv = dv;
    }
    const CallKind kind = backward ? CallKind::backward : CallKind::forward;
    AttnParams p;
    fsdpa_status s = make_attn_params(kind, params, t, &p);
    if (s != FSDPA_OK) return s;
    const Backend* be = find_backend(p.device_type);
    if (be == nullptr)
      return set_error(FSDPA_ERROR_DEVICE,
                       "q: no backend for DLPack device type %d in this build (compiled in: %s)",
                       p.device_type, backend_names());
    if ((s = backend_supports(*be, p)) != FSDPA_OK) return s;
    if (buf == nullptr || size == 0) return FSDPA_OK;
    if (be->explain == nullptr) {
      snprintf(buf, size, "backend %s: no plan to explain\n", be->name);
      return FSDPA_OK;
    }
    return be->explain(p, backward != 0, buf, size);
  });
}

fsdpa_status fsdpa_reference_forward(const fsdpa_params* params, const DLTensor* q,
                                     const DLTensor* k, const DLTensor* v, DLTensor* out,
                                     DLTensor* lse) {
  return guarded([&] {
    CallTensors t;
    t.q = q; t.k = k; t.v = v; t.out = out; t.lse = lse;
    AttnParams p;
    fsdpa_status s = make_attn_params(CallKind::reference_forward, params, t, &p);
    if (s == FSDPA_OK) reference_forward(p);
    return s;
  });
}

fsdpa_status fsdpa_reference_backward(const fsdpa_params* params, const DLTensor* dout,
                                      const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                      DLTensor* dq, DLTensor* dk, DLTensor* dv) {
  return guarded([&] {
    CallTensors t;
    t.q = q; t.k = k; t.v = v;
    t.dout = dout; t.dq = dq; t.dk = dk; t.dv = dv;
    AttnParams p;
    fsdpa_status s = make_attn_params(CallKind::reference_backward, params, t, &p);
    if (s == FSDPA_OK) reference_backward(p);
    return s;
  });
}

fsdpa_status fsdpa_dropout_mask(const fsdpa_params* params, const DLTensor* q, const DLTensor* k,
                                DLTensor* keep) {
  return guarded([&] {
    CallTensors t;
    t.q = q; t.k = k; t.out = keep;
    AttnParams p;
    fsdpa_status s = make_attn_params(CallKind::dropout_mask, params, t, &p);
    if (s == FSDPA_OK) reference_dropout_mask(p);
    return s;
  });
}

const char* fsdpa_last_error(void) { return last_error(); }

fsdpa_status fsdpa_forward_msg(const fsdpa_params* p, const DLTensor* q, const DLTensor* k,
                               const DLTensor* v, DLTensor* out, DLTensor* lse, void* stream,
                               char* msg, size_t msg_size) {
  return copy_message(fsdpa_forward(p, q, k, v, out, lse, stream), msg, msg_size);
}

fsdpa_status fsdpa_backward_msg(const fsdpa_params* p, const DLTensor* dout, const DLTensor* q,
                                const DLTensor* k, const DLTensor* v, const DLTensor* out,
                                const DLTensor* lse, DLTensor* dq, DLTensor* dk, DLTensor* dv,
                                void* stream, char* msg, size_t msg_size) {
  return copy_message(fsdpa_backward(p, dout, q, k, v, out, lse, dq, dk, dv, stream), msg,
                      msg_size);
}

fsdpa_status fsdpa_merge_attn_states_msg(const DLTensor* out_a, const DLTensor* lse_a,
                                         const DLTensor* out_b, const DLTensor* lse_b,
                                         DLTensor* out, DLTensor* lse, void* stream, char* msg,
                                         size_t msg_size) {
  return copy_message(fsdpa_merge_attn_states(out_a, lse_a, out_b, lse_b, out, lse, stream), msg,
                      msg_size);
}

fsdpa_status fsdpa_explain_msg(const fsdpa_params* p, int32_t backward, const DLTensor* dout,
                               const DLTensor* q, const DLTensor* k, const DLTensor* v,
                               const DLTensor* out, const DLTensor* lse, const DLTensor* dq,
                               const DLTensor* dk, const DLTensor* dv, char* buf, size_t size,
                               char* msg, size_t msg_size) {
  return copy_message(fsdpa_explain(p, backward, dout, q, k, v, out, lse, dq, dk, dv, buf, size),
                      msg, msg_size);
}

fsdpa_status fsdpa_reference_forward_msg(const fsdpa_params* p, const DLTensor* q,
                                         const DLTensor* k, const DLTensor* v, DLTensor* out,
                                         DLTensor* lse, char* msg, size_t msg_size) {
  return copy_message(fsdpa_reference_forward(p, q, k, v, out, lse), msg, msg_size);
}

fsdpa_status fsdpa_reference_backward_msg(const fsdpa_params* p, const DLTensor* dout,
                                          const DLTensor* q, const DLTensor* k, const DLTensor* v,
                                          DLTensor* dq, DLTensor* dk, DLTensor* dv, char* msg,
                                          size_t msg_size) {
  return copy_message(fsdpa_reference_backward(p, dout, q, k, v, dq, dk, dv), msg, msg_size);
}

fsdpa_status fsdpa_dropout_mask_msg(const fsdpa_params* p, const DLTensor* q, const DLTensor* k,
                                    DLTensor* keep, char* msg, size_t msg_size) {
  return copy_message(fsdpa_dropout_mask(p, q, k, keep), msg, msg_size);
}

const char* fsdpa_version(void) { return FLASHSDPA_VERSION_STRING; }

const char* fsdpa_backends(void) { return backend_names(); }

int fsdpa_device_available(int32_t dl_device_type) {
  const Backend* be = find_backend(dl_device_type);
  return be != nullptr && be->available() ? 1 : 0;
}

void fsdpa_set_num_threads(int n) { g_cpu_threads.store(n > 0 ? n : 0); }

void fsdpa_set_workspace_allocator(fsdpa_workspace_alloc_fn alloc, fsdpa_workspace_free_fn free_fn,
                                   void* ctx) {
  std::lock_guard<std::mutex> lock(g_workspace_mu);
  g_workspace = alloc != nullptr && free_fn != nullptr ? WorkspaceAllocator{alloc, free_fn, ctx}
                                                       : WorkspaceAllocator{nullptr, nullptr, nullptr};
}

int fsdpa_get_num_threads(void) { return cpu_thread_count(); }

}  // extern "C"
