/*
 * flashsdpa — exact, memory-efficient attention (forward and backward).
 *
 * The stable C ABI. Plain C99, usable from any language with a C FFI.
 *
 * Tensors cross the boundary as DLPack `DLTensor`s (shape + strides in
 * elements), so any memory layout of the logical shape works without copies.
 * The backend is chosen from the tensors' DLPack device.
 *
 * Logical shapes (padded form):
 *   q    [B, Hq, Sq, D]      k [B, Hk, Sk, D]     v [B, Hk, Sk, Dv]
 *   out  [B, Hq, Sq, Dv]     lse [B, Hq, Sq] float32
 * Varlen form (params.cu_seqlens_q / cu_seqlens_k set, int32 [B + 1]):
 *   q    [total_q, Hq, D]    k [total_k, Hk, D]   v [total_k, Hk, Dv]
 *   out  [total_q, Hq, Dv]   lse [Hq, total_q] float32
 *   The offsets start at 0, never decrease, give no sequence longer than
 *   max_seqlen_q / max_seqlen_k and end within total_q / total_k. The CPU
 *   checks them (an error naming the argument); in GPU memory they are the
 *   caller's contract, checked by the CUDA backend's debug check (check_finite
 *   = 1, or FLASHSDPA_CHECK_INDICES=1; see seqused_k below).
 *
 * Semantics (identical on every backend, defined by the fp64 reference):
 *   s_ij  = scale * <q_i, k_j>
 *   s_ij  = softcap * tanh(s_ij / softcap)                 if softcap > 0
 *   s_ij += -slope_h * |i + off - j|                         if alibi_slopes
 *   s_ij += mask_ij (float mask) / s_ij = -inf if !mask_ij (bool mask)
 *           (a float mask value <= -FLT_MAX / 2, e.g. finfo(float32).min,
 *           counts as -inf)
 *   s_ij  = -inf unless key j is inside the causal/window band of row i
 *   p_ij  = softmax_j(s_ij);  with dropout p_ij *= keep_ij / (1 - dropout_p)
 *   out_i = sum_j p_ij v_j;   lse_i = log sum_j exp(s_ij)
 * where off = 0 for top-left alignment and Sk - Sq (per sequence) for
 * bottom-right alignment. The band of row i is
 *   i + off - window_left <= j <= i + off + window_right
 * (-1 is unbounded, any other negative bound is rejected; causal forces
 * window_right = 0).
 * A row with no visible key gives out = 0 and lse = -inf, never NaN.
 * GQA/MQA: query head h reads key/value head h / (Hq / Hk).
 *
 * NaN and Inf (check_finite = 0; they propagate as through PyTorch's
 * softmax):
 *   - Row i attends key j when the final s_ij is not -inf. Keys outside
 *     the causal/window band, keys a bool mask hides and keys a float
 *     mask value of -inf (or <= -FLT_MAX / 2) hides are not attended
 *     whatever q and k hold: s_ij = -inf even if q.k is NaN (PyTorch's
 *     math backend adds -inf to NaN and gets NaN there). Other float mask
 *     values are added: NaN stays NaN.
 *   - A row with a NaN or +inf score (NaN/Inf in q or k, NaN or +inf in
 *     the float mask, a NaN ALiBi slope, ...) gives out = NaN in every
 *     column and lse = NaN.
 *   - A row whose scores are all -inf attends nothing: out = 0, lse =
 *     -inf, whatever v holds.
 *   - Otherwise a NaN/Inf in v_jd makes out_id non-finite in every row i
 *     whose p_ij (after dropout) is not 0. Where p_ij is 0 (the key is not
 *     attended, p underflows, dropout drops it) the effect is unspecified:
 *     the reference ignores unattended keys, a kernel may give 0 * NaN =
 *     NaN for keys in a tile it computes (PyTorch's math backend gives
 *     NaN in every row, its flash backend only in tiles it computes).
 *   - Backward: the gradients are computed with the same IEEE arithmetic
 *     (a NaN row gives NaN gradients where it reaches them).
 * check_finite = 1 (the default): a NaN/Inf anywhere in q, k, v (forward)
 * or also dout (backward), masked or not, is FSDPA_ERROR_NONFINITE_INPUT
 * naming the tensor (varlen tokens after the last sequence belong to no
 * row: a backend may skip them; masks and ALiBi slopes are not checked).
 */
#ifndef FLASHSDPA_FLASHSDPA_H
#define FLASHSDPA_FLASHSDPA_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#if defined(_WIN32)
#  if defined(FLASHSDPA_BUILDING)
#    define FSDPA_API __declspec(dllexport)
#  else
#    define FSDPA_API
#  endif
#else
#  define FSDPA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FSDPA_VERSION_MAJOR 0
#define FSDPA_VERSION_MINOR 1
#define FSDPA_VERSION_PATCH 0

/* Largest head dimension (D and Dv) any backend accepts. */
#define FSDPA_MAX_HEAD_DIM 256

/* Bytes (with the terminating NUL) that hold any error message. */
#define FSDPA_MAX_MESSAGE_SIZE 1024

/* DLPack's boolean type code (added in DLPack 0.8; spelled out here so older
 * dlpack.h headers work). Masks may also be uint8 (nonzero = attend). */
#define FSDPA_DL_BOOL 6

typedef enum fsdpa_status {
  FSDPA_OK = 0,
  FSDPA_ERROR_INVALID_ARGUMENT = 1, /* shape, stride, dtype, value */
  FSDPA_ERROR_UNSUPPORTED = 2,      /* valid, but not (yet) supported */
  FSDPA_ERROR_DEVICE = 3,           /* no backend for the tensors' device */
  FSDPA_ERROR_OUT_OF_MEMORY = 4,    /* workspace allocation failed */
  FSDPA_ERROR_NONFINITE_INPUT = 5,  /* NaN/Inf in q, k, v or dout */
  FSDPA_ERROR_INTERNAL = 6          /* backend failure (e.g. CUDA error) */
} fsdpa_status;

typedef enum fsdpa_align {
  /* Row i's diagonal is key i (PyTorch SDPA's is_causal). */
  FSDPA_ALIGN_TOP_LEFT = 0,
  /* Row i's diagonal is key i + Sk - Sq (FlashAttention's causal). */
  FSDPA_ALIGN_BOTTOM_RIGHT = 1
} fsdpa_align;

/* Parameters of one attention call. Always initialise with
 * fsdpa_params_init(&p): it fills the defaults and struct_size, which lets
 * later versions of the library add fields at the end without breaking
 * callers compiled against this header. */
typedef struct fsdpa_params {
  uint32_t struct_size;   /* sizeof(fsdpa_params) of the caller's header */

  float scale;            /* softmax scale; NaN (default) = 1/sqrt(D) */
  int32_t causal;         /* nonzero: window_right is forced to 0 */
  int32_t align;          /* fsdpa_align of the causal/window diagonal */
  int64_t window_left;    /* keys allowed left of the diagonal; -1 = all */
  int64_t window_right;   /* keys allowed right of the diagonal; -1 = all */
  float softcap;          /* tanh soft-capping of scores; 0 = off */

  /* Optional mask, broadcastable to [B, Hq, Sq, Sk] (rank 2..4, right
   * aligned; broadcast dims have size 1 or stride 0). Bool/uint8: nonzero
   * = attend. Float (fp32 or the dtype of q): added to the scores.
   * Not combined with varlen. */
  const DLTensor* mask;
  /* Optional ALiBi slopes, float32 [Hq] or [B, Hq]. */
  const DLTensor* alibi_slopes;

  /* Varlen: int32 [B + 1] prefix sums of the sequence lengths, on the
   * device of q. Both set or both NULL. max_seqlen_* bound the lengths. */
  const DLTensor* cu_seqlens_q;
  const DLTensor* cu_seqlens_k;
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;

  /* Dropout on the attention probabilities. The keep decision of element
   * (b, h, i, j) is a pure function of (seed, offset, b, h, i, j) through
   * Philox-4x32-10 (see fsdpa_dropout_mask), so the backward regenerates
   * the forward's mask and every backend draws the same mask. */
  float dropout_p;
  uint64_t seed;
  uint64_t offset;

  int32_t deterministic;  /* backward: bit-reproducible reductions */
  int32_t check_finite;   /* default 1: NaN/Inf in q, k, v, dout is an error */

  /* ---- KV cache (added after 0.1.0; forward only; int32, on q's device) ----
   * A caller built against 0.1.0 passes a smaller struct_size: these fields
   * then read as NULL.
   *
   * seqused_k [B]: sequence b uses only its first seqused_k[b] keys (the
   *   cache length, FlashAttention's cache_seqlens / seqused_k): in the
   *   padded form cache positions [0, seqused_k[b]) of its cache row, in
   *   the varlen form the first seqused_k[b] tokens from cu_seqlens_k[b].
   * cache_batch_idx [B] (padded form): sequence b reads cache row
   *   cache_batch_idx[b] of k/v, or of block_table when paged; k/v (or
   *   block_table) may then have any number of rows.
   * cache_leftpad [B] (padded form): sequence b's keys start at cache
   *   position cache_leftpad[b]; key j of the semantics above is cache
   *   position cache_leftpad[b] + j, and Sk of sequence b is
   *   seqused_k[b] (or the cache length) - cache_leftpad[b].
   * block_table [B or B_cache, max_pages]: paged KV. k and v are then the
   *   page pool, logical shape [num_pages, Hk, page_size, D] (Dv for v; any
   *   strides; a [num_pages, page_size, Hk, D] buffer is passed as a view),
   *   any page_size >= 1. Cache position t of sequence b is row t % page_size
   *   of page block_table[b, t / page_size]. In the varlen form the
   *   lengths come from cu_seqlens_k (or seqused_k) and each sequence's
   *   positions start at 0 of its own block_table row.
   * Not combined with mask or dropout. Served by the CPU, CUDA (the
   *   decode, tensor-core and SIMT kernels read pages of any size in place)
   *   and Metal (likewise; verified on the MSL emulator only).
   * Checks: on the CPU every used page index, seqused_k and cache_leftpad
   * entry is checked (an error naming the argument). On GPUs the values
   * live in device memory and are the caller's contract: a page index in
   * [0, num_pages), 0 <= cache_leftpad[b] <= seqused_k[b] <= the cache
   * length (max_pages * page_size when paged), cache_batch_idx[b] a row of
   * k/v (or of block_table); the kernels read what they are given, with no
   * host synchronisation. The CUDA backend's debug check copies the values
   * to the host and checks them as the CPU does (same messages) before
   * anything runs: on with check_finite = 1 (which synchronises anyway),
   * or with the environment variable FLASHSDPA_CHECK_INDICES=1 (read per
   * call; e.g. for the Python API, which passes check_finite = 0 on GPUs).
   * The Metal backend checks them the same way with check_finite = 1 when
   * their buffers are CPU-readable (shared storage). */
  const DLTensor* seqused_k;
  const DLTensor* cache_batch_idx;
  const DLTensor* cache_leftpad;
  const DLTensor* block_table;

  /* ---- Block-sparse mask (added after the KV cache; FlexAttention's
   * BlockMask without an Sq x Sk tensor) ----
   * A caller built before these fields passes a smaller struct_size: they
   * then read as 0 / NULL (off).
   *
   * The query rows are cut into blocks of sparse_block_q rows (query block
   * qb holds rows [qb * sparse_block_q, (qb + 1) * sparse_block_q)), the
   * keys into blocks of sparse_block_k keys (the last block of each may be
   * short). For every (batch b, query head h, query block qb) two lists
   * name the key blocks the block's rows may see:
   *   full_kv_indices [Bm, Hm, NQB, F] with full_kv_num_blocks [Bm, Hm, NQB]:
   *     the first full_kv_num_blocks[b, h, qb] entries are key blocks every
   *     row of the block sees entirely;
   *   kv_indices [Bm, Hm, NQB, P] with kv_num_blocks [Bm, Hm, NQB]: the
   *     first kv_num_blocks[b, h, qb] entries (slots s) are partial key
   *     blocks, whose keys are seen where
   *       kv_block_mask [Bm, Hm, NQB, P, sparse_block_q, sparse_block_k]
   *     (bool/uint8, element [b, h, qb, s, i % bq, j % bk]) is nonzero, or
   *     entirely if kv_block_mask is NULL (the caller says they are full).
   * Key j is visible to row i only if its block is in one of the two lists
   * of i's (b, h, query block): every other key is masked (s_ij = -inf,
   * like a false bool mask). The causal/window band, a mask, ALiBi,
   * softcap and dropout apply on top as usual. A row whose listed keys are
   * all masked gives out 0 and lse -inf.
   * All int32, bool/uint8 for kv_block_mask, on q's device, any strides.
   * Bm is 1 or B and Hm is 1 or Hq (size 1 or stride 0 broadcasts: one
   * pattern for every batch / head); NQB >= ceil(Sq / sparse_block_q)
   * (extra blocks are ignored). Either pair may be NULL (no blocks of that
   * kind), not both; a list's entries beyond its count are not read.
   * Contract, checked on the CPU (on GPUs the lists live in device memory
   * and are trusted): 0 <= count <= the list's length, every listed index
   * in [0, ceil(Sk / sparse_block_k)), no key block listed twice in one
   * row (across both lists).
   * sparse_block_q, sparse_block_k >= 1 when the lists are set (FlexAttention
   * uses 128 x 128); backends convert to their own tiles. Not combined with
   * varlen (cu_seqlens) or the KV-cache parameters. Served by the CPU and
   * by CUDA (the sm80 tensor-core and SIMT kernels, which expand the lists
   * into one int32 per (query block, key block) of workspace) and Metal
   * (the same expansion into scratch; verified on the MSL emulator only). */
  int64_t sparse_block_q;
  int64_t sparse_block_k;
  const DLTensor* kv_num_blocks;
  const DLTensor* kv_indices;
  const DLTensor* kv_block_mask;
  const DLTensor* full_kv_num_blocks;
  const DLTensor* full_kv_indices;
} fsdpa_params;

/* struct_size of the first release's fsdpa_params (before the KV cache
 * fields); the library accepts any struct_size from this one up. */
#define FSDPA_PARAMS_SIZE_V0_1 offsetof(fsdpa_params, seqused_k)
/* struct_size with the KV cache fields, before the block-sparse mask. */
#define FSDPA_PARAMS_SIZE_V0_2 offsetof(fsdpa_params, sparse_block_q)

/* Fills the first `size` bytes of *p (the caller's sizeof(fsdpa_params))
 * with the defaults (no mask, no dropout, scale NaN = 1/sqrt(D)) and sets
 * struct_size = size: a caller built against an older header gets a struct
 * of its own size, never a write past it. C and C++ callers use the macro
 * fsdpa_params_init(p) below, which passes sizeof(*p); callers through a
 * foreign-function interface call this with the size of their struct. */
FSDPA_API void fsdpa_params_init_sized(fsdpa_params* p, size_t size);

/* The first release's initialiser, kept for programs built against it: fills
 * FSDPA_PARAMS_SIZE_V0_1 bytes. Source code reaches fsdpa_params_init_sized
 * through the macro (as zlib's deflateInit passes sizeof(z_stream)). */
FSDPA_API void fsdpa_params_init(fsdpa_params* p);
#define fsdpa_params_init(p) fsdpa_params_init_sized((p), sizeof(*(p)))

/* out (and lse, if not NULL) are written. stream: the backend's stream
 * (cudaStream_t for CUDA, MTLCommandQueue for Metal), NULL = default. */
FSDPA_API fsdpa_status fsdpa_forward(const fsdpa_params* p, const DLTensor* q,
                                     const DLTensor* k, const DLTensor* v,
                                     DLTensor* out, DLTensor* lse, void* stream);

/* Gradients of the forward with the same params. lse is the forward's;
 * dq, dk, dv have the shapes of q, k, v (GQA gradients reduced to Hk). */
FSDPA_API fsdpa_status fsdpa_backward(const fsdpa_params* p, const DLTensor* dout,
                                      const DLTensor* q, const DLTensor* k,
                                      const DLTensor* v, const DLTensor* out,
                                      const DLTensor* lse, DLTensor* dq,
                                      DLTensor* dk, DLTensor* dv, void* stream);

/* Merges two attention results over disjoint key sets into the result over
 * their union (cascade / split-KV / context-parallel pieces):
 *   lse = log(exp(lse_a) + exp(lse_b))
 *   out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b
 * lse is the natural-log log-sum-exp that fsdpa_forward returns. A part
 * with lse = -inf contributes nothing; both -inf gives out 0, lse -inf
 * (never NaN); lse = +inf or NaN is an error on the CPU.
 * Shapes: out_a, out_b, out [..., Dv] (rank 1..4, any strides, one dtype
 * of float32/float16/bfloat16), lse_a, lse_b, lse float32 of logical shape
 * out's minus the last dim (any strides: fsdpa_forward's lse [B, Hq, Sq]
 * for an out stored [B, Sq, Hq, Dv], or the varlen lse [Hq, total], is
 * passed as a transposed view).
 * out may alias out_a (in place); lse may alias lse_a. */
FSDPA_API fsdpa_status fsdpa_merge_attn_states(const DLTensor* out_a, const DLTensor* lse_a,
                                               const DLTensor* out_b, const DLTensor* lse_b,
                                               DLTensor* out, DLTensor* lse, void* stream);

/* The plan that fsdpa_forward (backward = 0) or fsdpa_backward (backward =
 * 1) would run for these arguments, as text: the backend, the kernel family,
 * its tiles, splits and workspace bytes, and the reason for each choice
 * (e.g. why the Hopper kernels do or do not take the call). Written into
 * buf (NUL-terminated, truncated to size bytes). The tensors are checked as
 * the call would check them, but nothing is read from or written to them
 * and nothing runs on the device. In the forward, dout, dq, dk, dv may be
 * NULL. Returns what the call would return for an invalid argument or an
 * unsatisfiable override, else FSDPA_OK. */
FSDPA_API fsdpa_status fsdpa_explain(const fsdpa_params* p, int32_t backward,
                                     const DLTensor* dout, const DLTensor* q,
                                     const DLTensor* k, const DLTensor* v,
                                     const DLTensor* out, const DLTensor* lse,
                                     const DLTensor* dq, const DLTensor* dk,
                                     const DLTensor* dv, char* buf, size_t size);

/* The fp64 reference of the same semantics (CPU tensors only), the oracle
 * every backend is tested against. Inputs of any supported dtype or float64;
 * outputs may be float64. O(Sq*Sk) memory: for tests, not for use. */
FSDPA_API fsdpa_status fsdpa_reference_forward(const fsdpa_params* p,
                                               const DLTensor* q, const DLTensor* k,
                                               const DLTensor* v, DLTensor* out,
                                               DLTensor* lse);
FSDPA_API fsdpa_status fsdpa_reference_backward(
    const fsdpa_params* p, const DLTensor* dout, const DLTensor* q,
    const DLTensor* k, const DLTensor* v, DLTensor* dq, DLTensor* dk,
    DLTensor* dv);

/* Writes the dropout keep mask (1 = kept) that params p realise for a
 * problem of q's and k's shapes into keep, a CPU uint8/bool tensor
 * [B, Hq, Sq, Sk] (padded form only). For tests and debugging. */
FSDPA_API fsdpa_status fsdpa_dropout_mask(const fsdpa_params* p, const DLTensor* q,
                                          const DLTensor* k, DLTensor* keep);

/* Message of the last status-returning call on this OS thread ("" if it
 * succeeded). It names the offending argument and why. Valid until the next call on this
 * thread. A caller whose code may move between OS threads between the call
 * and this query (goroutines, async runtimes, green threads) uses the _msg
 * variants below instead. */
FSDPA_API const char* fsdpa_last_error(void);

/* The same calls, also writing their message into a caller-provided buffer,
 * so that reading it does not depend on which OS thread asks: msg receives
 * "" on success and the fsdpa_last_error() text on failure, NUL-terminated
 * and truncated to msg_size bytes (FSDPA_MAX_MESSAGE_SIZE hold every message). msg = NULL or
 * msg_size = 0 writes nothing. fsdpa_last_error() is set as by the plain
 * call. */
FSDPA_API fsdpa_status fsdpa_forward_msg(const fsdpa_params* p, const DLTensor* q,
                                         const DLTensor* k, const DLTensor* v,
                                         DLTensor* out, DLTensor* lse, void* stream,
                                         char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_backward_msg(const fsdpa_params* p, const DLTensor* dout,
                                          const DLTensor* q, const DLTensor* k,
                                          const DLTensor* v, const DLTensor* out,
                                          const DLTensor* lse, DLTensor* dq,
                                          DLTensor* dk, DLTensor* dv, void* stream,
                                          char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_merge_attn_states_msg(const DLTensor* out_a, const DLTensor* lse_a,
                                                   const DLTensor* out_b, const DLTensor* lse_b,
                                                   DLTensor* out, DLTensor* lse, void* stream,
                                                   char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_explain_msg(const fsdpa_params* p, int32_t backward,
                                         const DLTensor* dout, const DLTensor* q,
                                         const DLTensor* k, const DLTensor* v,
                                         const DLTensor* out, const DLTensor* lse,
                                         const DLTensor* dq, const DLTensor* dk,
                                         const DLTensor* dv, char* buf, size_t size,
                                         char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_reference_forward_msg(const fsdpa_params* p,
                                                   const DLTensor* q, const DLTensor* k,
                                                   const DLTensor* v, DLTensor* out,
                                                   DLTensor* lse, char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_reference_backward_msg(
    const fsdpa_params* p, const DLTensor* dout, const DLTensor* q,
    const DLTensor* k, const DLTensor* v, DLTensor* dq, DLTensor* dk,
    DLTensor* dv, char* msg, size_t msg_size);
FSDPA_API fsdpa_status fsdpa_dropout_mask_msg(const fsdpa_params* p, const DLTensor* q,
                                              const DLTensor* k, DLTensor* keep,
                                              char* msg, size_t msg_size);

/* "MAJOR.MINOR.PATCH". */
FSDPA_API const char* fsdpa_version(void);

/* Comma-separated names of the backends compiled in, e.g. "cpu,cuda". */
FSDPA_API const char* fsdpa_backends(void);

/* 1 if a compiled-in backend serves this DLPack device type and a device
 * of that type is present at run time, else 0. */
FSDPA_API int fsdpa_device_available(int32_t dl_device_type);

/* Threads the CPU backend uses; n <= 0 restores the default: the
 * FLASHSDPA_NUM_THREADS environment variable, else, in a process that has
 * an OpenMP runtime loaded (PyTorch's), its omp_get_max_threads() (so the
 * work runs on that runtime's threads), else the physical cores. */
FSDPA_API void fsdpa_set_num_threads(int n);
FSDPA_API int fsdpa_get_num_threads(void);

/* Device scratch memory of the GPU backends (split-KV partials, the
 * backward's fp32 dQ accumulator, mask tile flags; fsdpa_explain gives the
 * bytes). By default each call takes it from a stream-ordered memory pool of
 * the library's own (cudaMallocFromPoolAsync on the call's stream: no
 * synchronisation, capturable in a CUDA graph) and frees it in stream order
 * after its last kernel. An engine with its own stream-ordered allocator
 * hands it over here: alloc(bytes, stream, ctx) returns memory usable in
 * stream order on `stream` (the call's cudaStream_t), or NULL, which fails
 * the call with FSDPA_ERROR_OUT_OF_MEMORY; free(ptr, stream, ctx) gets it
 * back, in stream order, once the call's kernels are enqueued. Both or
 * neither: alloc = NULL restores the default. Process-wide; set it before
 * calls that could run concurrently with the change. */
typedef void* (*fsdpa_workspace_alloc_fn)(size_t bytes, void* stream, void* ctx);
typedef void (*fsdpa_workspace_free_fn)(void* ptr, void* stream, void* ctx);
FSDPA_API void fsdpa_set_workspace_allocator(fsdpa_workspace_alloc_fn alloc,
                                             fsdpa_workspace_free_fn free_fn, void* ctx);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHSDPA_FLASHSDPA_H */
