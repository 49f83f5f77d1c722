// flashsdpa._C: the C ABI for Python. Every tensor argument is any object
// that implements the DLPack protocol (__dlpack__): PyTorch, NumPy, JAX,
// CuPy... It is wrapped into a DLTensor as it is (no copy, strides kept) and
// handed to the C ABI; a failing status becomes a Python exception that
// carries the library's message.
#include <math.h>
#include <stdint.h>

#include <optional>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "flashsdpa/flashsdpa.h"

#ifdef FLASHSDPA_HAS_METAL_PLANNER  // macOS builds with the Metal backend
#include <nanobind/stl/array.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <tuple>
#include <vector>

#include "metal/bridge.h"
#endif

namespace nb = nanobind;
// nb::array_api: any DLPack producer (torch, numpy, jax, cupy, ...) is taken
// as input whatever the tag; the tag makes the generated stub say typing.Any
// instead of numpy.typing.NDArray, so the stub needs no numpy (not a
// dependency of the package).
using Array = nb::ndarray<nb::ro, nb::array_api>;
using OptArray = std::optional<Array>;
using Out = nb::ndarray<nb::array_api>;
using OptOut = std::optional<Out>;

namespace {

// A DLTensor viewing an nb::ndarray (which keeps the producer's capsule, and
// with it the memory, alive for the duration of the call).
template <typename A>
DLTensor to_dl(const A& a) {
  DLTensor t{};
  t.data = const_cast<void*>(static_cast<const void*>(a.data_handle()));
  t.byte_offset = a.byte_offset();
  t.device.device_type = static_cast<DLDeviceType>(a.device_type());
  t.device.device_id = a.device_id();
  t.ndim = static_cast<int32_t>(a.ndim());
  t.dtype.code = a.dtype().code;
  t.dtype.bits = a.dtype().bits;
  t.dtype.lanes = a.dtype().lanes;
  t.shape = const_cast<int64_t*>(a.shape_ptr());
  t.strides = const_cast<int64_t*>(a.stride_ptr());
  return t;
}

struct OptDL {
  DLTensor t{};
  bool set = false;
  template <typename A>
  explicit OptDL(const std::optional<A>& a) {
    if (a) {
      t = to_dl(*a);
      set = true;
    }
  }
  DLTensor* get() { return set ? &t : nullptr; }
};

// Python exception classes for the statuses; the message says which argument
// failed and why, e.g. "k: head dim 32 differs from q's 64".

[[noreturn]] void raise(fsdpa_status s) {
  std::string msg = fsdpa_last_error();
  if (msg.empty()) msg = "flashsdpa: call failed with status " + std::to_string(int(s));
  switch (s) {
    case FSDPA_ERROR_INVALID_ARGUMENT:
      // dtype problems are TypeErrors, everything else about arguments a ValueError.
      if (msg.find("dtype") != std::string::npos) throw nb::type_error(msg.c_str());
      throw nb::value_error(msg.c_str());
    case FSDPA_ERROR_NONFINITE_INPUT:
      throw nb::value_error(msg.c_str());
    case FSDPA_ERROR_OUT_OF_MEMORY:
      throw std::bad_alloc();  // nanobind maps it to MemoryError
    default:  // UNSUPPORTED, DEVICE, INTERNAL
      throw std::runtime_error(msg);
  }
}

void check(fsdpa_status s) {
  if (s != FSDPA_OK) raise(s);
}

// The block-sparse lists (flashsdpa.h), all optional.
struct SparseDL {
  OptDL num, idx, mask, full_num, full_idx;
  SparseDL(const OptArray& n, const OptArray& i, const OptArray& m, const OptArray& fn,
           const OptArray& fi)
      : num(n), idx(i), mask(m), full_num(fn), full_idx(fi) {}
  void apply(fsdpa_params* p) {
    p->kv_num_blocks = num.get();
    p->kv_indices = idx.get();
    p->kv_block_mask = mask.get();
    p->full_kv_num_blocks = full_num.get();
    p->full_kv_indices = full_idx.get();
  }
};
#define FSDPA_SPARSE_PARAMS                                                            \
  OptArray kv_num_blocks, OptArray kv_indices, OptArray kv_block_mask,                 \
      OptArray full_kv_num_blocks, OptArray full_kv_indices
#define FSDPA_SPARSE_APPLY(p)                                                          \
  SparseDL sparse_(kv_num_blocks, kv_indices, kv_block_mask, full_kv_num_blocks,       \
                   full_kv_indices);                                                   \
  sparse_.apply(&(p))
#define FSDPA_SPARSE_ARGS                                                              \
  nb::arg("kv_num_blocks").none() = nb::none(), nb::arg("kv_indices").none() = nb::none(), \
      nb::arg("kv_block_mask").none() = nb::none(),                                   \
      nb::arg("full_kv_num_blocks").none() = nb::none(),                              \
      nb::arg("full_kv_indices").none() = nb::none()

struct Params {
  fsdpa_params p;
  Params() { fsdpa_params_init(&p); }
};

void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace

NB_MODULE(_C, m) {
  m.doc() =
      "Low-level bindings of the flashsdpa C ABI. Tensors are DLPack-capable objects, "
      "used in place (no copies, any strides). See flashsdpa.h for the exact semantics.";

  m.attr("MAX_HEAD_DIM") = FSDPA_MAX_HEAD_DIM;
  m.attr("ALIGN_TOP_LEFT") = int(FSDPA_ALIGN_TOP_LEFT);
  m.attr("ALIGN_BOTTOM_RIGHT") = int(FSDPA_ALIGN_BOTTOM_RIGHT);
  m.attr("DL_CPU") = int(kDLCPU);
  m.attr("DL_CUDA") = int(kDLCUDA);
  m.attr("DL_METAL") = int(kDLMetal);

  nb::class_<Params>(m, "Params",
                     "fsdpa_params, initialised with fsdpa_params_init() (scale NaN = 1/sqrt(D)).")
      .def(nb::init<>())
      .def_prop_rw("scale", [](const Params& s) { return s.p.scale; },
                   [](Params& s, float v) { s.p.scale = v; })
      .def_prop_rw("causal", [](const Params& s) { return s.p.causal != 0; },
                   [](Params& s, bool v) { s.p.causal = v; })
      .def_prop_rw("align", [](const Params& s) { return s.p.align; },
                   [](Params& s, int v) { s.p.align = v; })
      .def_prop_rw("window_left", [](const Params& s) { return s.p.window_left; },
                   [](Params& s, int64_t v) { s.p.window_left = v; })
      .def_prop_rw("window_right", [](const Params& s) { return s.p.window_right; },
                   [](Params& s, int64_t v) { s.p.window_right = v; })
      .def_prop_rw("softcap", [](const Params& s) { return s.p.softcap; },
                   [](Params& s, float v) { s.p.softcap = v; })
      .def_prop_rw("max_seqlen_q", [](const Params& s) { return s.p.max_seqlen_q; },
                   [](Params& s, int64_t v) { s.p.max_seqlen_q = v; })
      .def_prop_rw("max_seqlen_k", [](const Params& s) { return s.p.max_seqlen_k; },
                   [](Params& s, int64_t v) { s.p.max_seqlen_k = v; })
      .def_prop_rw("dropout_p", [](const Params& s) { return s.p.dropout_p; },
                   [](Params& s, float v) { s.p.dropout_p = v; })
      .def_prop_rw("seed", [](const Params& s) { return s.p.seed; },
                   [](Params& s, uint64_t v) { s.p.seed = v; })
      .def_prop_rw("offset", [](const Params& s) { return s.p.offset; },
                   [](Params& s, uint64_t v) { s.p.offset = v; })
      .def_prop_rw("deterministic", [](const Params& s) { return s.p.deterministic != 0; },
                   [](Params& s, bool v) { s.p.deterministic = v; })
      .def_prop_rw("check_finite", [](const Params& s) { return s.p.check_finite != 0; },
                   [](Params& s, bool v) { s.p.check_finite = v; })
      .def_prop_rw("sparse_block_q", [](const Params& s) { return s.p.sparse_block_q; },
                   [](Params& s, int64_t v) { s.p.sparse_block_q = v; })
      .def_prop_rw("sparse_block_k", [](const Params& s) { return s.p.sparse_block_k; },
                   [](Params& s, int64_t v) { s.p.sparse_block_k = v; });

  m.def(
      "forward",
      [](const Params& params, Array q, Array k, Array v, Out out, OptOut lse, OptArray mask,
         OptArray alibi_slopes, OptArray cu_seqlens_q, OptArray cu_seqlens_k, uintptr_t stream,
         OptArray seqused_k, OptArray cache_batch_idx, OptArray cache_leftpad,
         OptArray block_table,
         FSDPA_SPARSE_PARAMS) {
        DLTensor tq = to_dl(q), tk = to_dl(k), tv = to_dl(v), to = to_dl(out);
        OptDL tl(lse), tm(mask), ta(alibi_slopes), tcq(cu_seqlens_q), tck(cu_seqlens_k);
        OptDL tsk(seqused_k), tbi(cache_batch_idx), tlp(cache_leftpad), tbt(block_table);
        fsdpa_params p = params.p;
        p.mask = tm.get();
        p.alibi_slopes = ta.get();
        p.cu_seqlens_q = tcq.get();
        p.cu_seqlens_k = tck.get();
        p.seqused_k = tsk.get();
        p.cache_batch_idx = tbi.get();
        p.cache_leftpad = tlp.get();
        p.block_table = tbt.get();
        FSDPA_SPARSE_APPLY(p);
        fsdpa_status s;
        {
          nb::gil_scoped_release nogil;
          s = fsdpa_forward(&p, &tq, &tk, &tv, &to, tl.get(), as_stream(stream));
        }
        check(s);
      },
      nb::arg("params"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
      nb::arg("lse").none() = nb::none(), nb::arg("mask").none() = nb::none(),
      nb::arg("alibi_slopes").none() = nb::none(), nb::arg("cu_seqlens_q").none() = nb::none(),
      nb::arg("cu_seqlens_k").none() = nb::none(), nb::arg("stream") = 0,
      nb::arg("seqused_k").none() = nb::none(), nb::arg("cache_batch_idx").none() = nb::none(),
      nb::arg("cache_leftpad").none() = nb::none(), nb::arg("block_table").none() = nb::none(), FSDPA_SPARSE_ARGS,
      "fsdpa_forward: writes out (and lse if given). stream: the backend's stream handle as an "
      "int (cudaStream_t for CUDA), 0 = default. seqused_k, cache_batch_idx, cache_leftpad, "
      "block_table: the KV-cache parameters (int32; see flashsdpa.h).");

  m.def(
      "merge_attn_states",
      [](Array out_a, Array lse_a, Array out_b, Array lse_b, Out out, Out lse,
         uintptr_t stream) {
        DLTensor ta = to_dl(out_a), tla = to_dl(lse_a), tb = to_dl(out_b), tlb = to_dl(lse_b),
                 to = to_dl(out), tl = to_dl(lse);
        fsdpa_status s;
        {
          nb::gil_scoped_release nogil;
          s = fsdpa_merge_attn_states(&ta, &tla, &tb, &tlb, &to, &tl, as_stream(stream));
        }
        check(s);
      },
      nb::arg("out_a"), nb::arg("lse_a"), nb::arg("out_b"), nb::arg("lse_b"), nb::arg("out"),
      nb::arg("lse"), nb::arg("stream") = 0,
      "fsdpa_merge_attn_states: out/lse of the union of two attention results (lse of logical "
      "shape out.shape[:-1], natural log).");

  m.def(
      "backward",
      [](const Params& params, Array dout, Array q, Array k, Array v, Array out, Array lse,
         Out dq, Out dk, Out dv, OptArray mask, OptArray alibi_slopes, OptArray cu_seqlens_q,
         OptArray cu_seqlens_k, uintptr_t stream,
         FSDPA_SPARSE_PARAMS) {
        DLTensor tdo = to_dl(dout), tq = to_dl(q), tk = to_dl(k), tv = to_dl(v),
                 to = to_dl(out), tl = to_dl(lse), tdq = to_dl(dq), tdk = to_dl(dk),
                 tdv = to_dl(dv);
        OptDL tm(mask), ta(alibi_slopes), tcq(cu_seqlens_q), tck(cu_seqlens_k);
        fsdpa_params p = params.p;
        p.mask = tm.get();
        p.alibi_slopes = ta.get();
        p.cu_seqlens_q = tcq.get();
        p.cu_seqlens_k = tck.get();
        FSDPA_SPARSE_APPLY(p);
        fsdpa_status s;
        {
          nb::gil_scoped_release nogil;
          s = fsdpa_backward(&p, &tdo, &tq, &tk, &tv, &to, &tl, &tdq, &tdk, &tdv,
                             as_stream(stream));
        }
        check(s);
      },
      nb::arg("params"), nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("out"), nb::arg("lse"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"),
      nb::arg("mask").none() = nb::none(), nb::arg("alibi_slopes").none() = nb::none(),
      nb::arg("cu_seqlens_q").none() = nb::none(), nb::arg("cu_seqlens_k").none() = nb::none(),
      nb::arg("stream") = 0, FSDPA_SPARSE_ARGS, "fsdpa_backward: writes dq, dk, dv (GQA: dk/dv reduced to Hk).");

  m.def(
      "reference_forward",
      [](const Params& params, Array q, Array k, Array v, Out out, OptOut lse, OptArray mask,
         OptArray alibi_slopes, OptArray cu_seqlens_q, OptArray cu_seqlens_k,
         OptArray seqused_k, OptArray cache_batch_idx, OptArray cache_leftpad,
         OptArray block_table,
         FSDPA_SPARSE_PARAMS) {
        DLTensor tq = to_dl(q), tk = to_dl(k), tv = to_dl(v), to = to_dl(out);
        OptDL tl(lse), tm(mask), ta(alibi_slopes), tcq(cu_seqlens_q), tck(cu_seqlens_k);
        OptDL tsk(seqused_k), tbi(cache_batch_idx), tlp(cache_leftpad), tbt(block_table);
        fsdpa_params p = params.p;
        p.mask = tm.get();
        p.alibi_slopes = ta.get();
        p.cu_seqlens_q = tcq.get();
        p.cu_seqlens_k = tck.get();
        p.seqused_k = tsk.get();
        p.cache_batch_idx = tbi.get();
        p.cache_leftpad = tlp.get();
        p.block_table = tbt.get();
        FSDPA_SPARSE_APPLY(p);
        fsdpa_status s;
        {
          nb::gil_scoped_release nogil;
          s = fsdpa_reference_forward(&p, &tq, &tk, &tv, &to, tl.get());
        }
        check(s);
      },
      nb::arg("params"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
      nb::arg("lse").none() = nb::none(), nb::arg("mask").none() = nb::none(),
      nb::arg("alibi_slopes").none() = nb::none(), nb::arg("cu_seqlens_q").none() = nb::none(),
      nb::arg("cu_seqlens_k").none() = nb::none(), nb::arg("seqused_k").none() = nb::none(),
      nb::arg("cache_batch_idx").none() = nb::none(),
      nb::arg("cache_leftpad").none() = nb::none(), nb::arg("block_table").none() = nb::none(), FSDPA_SPARSE_ARGS,
      "fsdpa_reference_forward: the fp64 oracle (CPU tensors; outputs may be float64).");

  m.def(
      "reference_backward",
      [](const Params& params, Array dout, Array q, Array k, Array v, Out dq, Out dk, Out dv,
         OptArray mask, OptArray alibi_slopes, OptArray cu_seqlens_q, OptArray cu_seqlens_k,
         FSDPA_SPARSE_PARAMS) {
        DLTensor tdo = to_dl(dout), tq = to_dl(q), tk = to_dl(k), tv = to_dl(v),
                 tdq = to_dl(dq), tdk = to_dl(dk), tdv = to_dl(dv);
        OptDL tm(mask), ta(alibi_slopes), tcq(cu_seqlens_q), tck(cu_seqlens_k);
        fsdpa_params p = params.p;
        p.mask = tm.get();
        p.alibi_slopes = ta.get();
        p.cu_seqlens_q = tcq.get();
        p.cu_seqlens_k = tck.get();
        FSDPA_SPARSE_APPLY(p);
        fsdpa_status s;
        {
          nb::gil_scoped_release nogil;
          s = fsdpa_reference_backward(&p, &tdo, &tq, &tk, &tv, &tdq, &tdk, &tdv);
        }
        check(s);
      },
      nb::arg("params"), nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("dq"), nb::arg("dk"), nb::arg("dv"), nb::arg("mask").none() = nb::none(),
      nb::arg("alibi_slopes").none() = nb::none(), nb::arg("cu_seqlens_q").none() = nb::none(),
      nb::arg("cu_seqlens_k").none() = nb::none(), FSDPA_SPARSE_ARGS,
      "fsdpa_reference_backward: fp64 oracle gradients (CPU tensors).");

  m.def(
      "explain",
      [](const Params& params, bool backward, Array q, Array k, Array v, Array out, Array lse,
         OptArray dout, OptArray dq, OptArray dk, OptArray dv, OptArray mask,
         OptArray alibi_slopes, OptArray cu_seqlens_q, OptArray cu_seqlens_k) {
        DLTensor tq = to_dl(q), tk = to_dl(k), tv = to_dl(v), to = to_dl(out), tl = to_dl(lse);
        OptDL tdo(dout), tdq(dq), tdk(dk), tdv(dv);
        OptDL tm(mask), ta(alibi_slopes), tcq(cu_seqlens_q), tck(cu_seqlens_k);
        fsdpa_params p = params.p;
        p.mask = tm.get();
        p.alibi_slopes = ta.get();
        p.cu_seqlens_q = tcq.get();
        p.cu_seqlens_k = tck.get();
        char buf[2048];
        check(fsdpa_explain(&p, backward ? 1 : 0, tdo.get(), &tq, &tk, &tv, &to, &tl, tdq.get(),
                            tdk.get(), tdv.get(), buf, sizeof buf));
        return std::string(buf);
      },
      nb::arg("params"), nb::arg("backward"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
      nb::arg("out"), nb::arg("lse"), nb::arg("dout").none() = nb::none(),
      nb::arg("dq").none() = nb::none(), nb::arg("dk").none() = nb::none(),
      nb::arg("dv").none() = nb::none(), nb::arg("mask").none() = nb::none(),
      nb::arg("alibi_slopes").none() = nb::none(), nb::arg("cu_seqlens_q").none() = nb::none(),
      nb::arg("cu_seqlens_k").none() = nb::none(),
      "fsdpa_explain: the plan (backend, kernel family, tiles, splits, workspace bytes, and "
      "why) that forward (backward=False) or backward would run for these arguments. "
      "Nothing runs.");

  m.def(
      "dropout_mask",
      [](const Params& params, Array q, Array k, Out keep) {
        DLTensor tq = to_dl(q), tk = to_dl(k), tkeep = to_dl(keep);
        fsdpa_params p = params.p;
        check(fsdpa_dropout_mask(&p, &tq, &tk, &tkeep));
      },
      nb::arg("params"), nb::arg("q"), nb::arg("k"), nb::arg("keep"),
      "fsdpa_dropout_mask: writes the keep mask [B, Hq, Sq, Sk] (bool/uint8, CPU) that the "
      "params' seed/offset realise.");

#ifdef FLASHSDPA_HAS_METAL_PLANNER
  // The MPS path (flashsdpa/metal.py): PyTorch's MPS tensors have no DLPack
  // export, so Python describes them and runs the planned dispatches itself.
  using Desc = std::tuple<bool, int32_t, std::vector<int64_t>, std::vector<int64_t>>;
  nb::class_<fsdpa::metal::BridgePlan>(m, "MetalPlan")
      .def_ro("key", &fsdpa::metal::BridgePlan::key)
      .def_ro("source", &fsdpa::metal::BridgePlan::source)
      .def_ro("kernels", &fsdpa::metal::BridgePlan::kernels)
      .def_ro("grid", &fsdpa::metal::BridgePlan::grid)
      .def_ro("threads", &fsdpa::metal::BridgePlan::threads)
      .def_prop_ro("args",
                   [](const fsdpa::metal::BridgePlan& b) {
                     return nb::bytes(b.args.data(), b.args.size());
                   })
      .def_ro("scratch_elements", &fsdpa::metal::BridgePlan::scratch_elements)
      .def_ro("sparse_state_elements", &fsdpa::metal::BridgePlan::sparse_state_elements)
      .def_ro("reason", &fsdpa::metal::BridgePlan::reason);
  m.def(
      "metal_plan",
      [](bool backward, const Params& params, const std::vector<Desc>& descs, int family) {
        std::vector<fsdpa::metal::TensorDesc> tensors(descs.size());
        for (size_t i = 0; i < descs.size(); ++i) {
          tensors[i].present = std::get<0>(descs[i]);
          tensors[i].dtype = std::get<1>(descs[i]);
          tensors[i].shape = std::get<2>(descs[i]);
          tensors[i].strides = std::get<3>(descs[i]);
        }
        // std::invalid_argument (validation message) becomes ValueError.
        return fsdpa::metal::plan_for_tensors(backward, params.p, tensors, family);
      },
      nb::arg("backward"), nb::arg("params"), nb::arg("tensors"), nb::arg("family"),
      "Plans a Metal call for tensors described as (present, dtype code, shape, strides) "
      "per buffer index (src/metal/bridge.h).");
#endif

  m.def("version", [] { return std::string(fsdpa_version()); });
  m.def("backends", [] { return std::string(fsdpa_backends()); },
        "Comma-separated names of the compiled-in backends, e.g. 'cpu,cuda'.");
  m.def("device_available", [](int dl_device_type) { return fsdpa_device_available(dl_device_type) != 0; },
        nb::arg("dl_device_type"));
  m.def("set_num_threads", [](int n) { fsdpa_set_num_threads(n); }, nb::arg("n"));
  m.def("get_num_threads", [] { return fsdpa_get_num_threads(); });
}
