// The block lists of a block-sparse mask (flashsdpa.h) expanded into one
// state per (query block, key block): the tensor-core and SIMT kernels then
// look up any tile or element in O(1), from the query side (forward, dQ) and
// from the key side (dK/dV) alike, which is the transposed walk the
// backward needs without building transposed lists. Size: one int32 per
// (query block, key block) of each distinct (batch, head) pattern, the
// dense form of FlexAttention's kv_indices.
#include <cuda_runtime.h>

#include "core/block_sparse.h"
#include "cuda/launch.h"

namespace fsdpa {
namespace cuda {
namespace {

// One thread per (pattern batch, pattern head, query block) row. The lists
// live in device memory, where the core cannot check them (flashsdpa.h: the
// caller's contract): counts are clamped to the lists' length and indices
// outside the key blocks dropped, so a bad list reads and writes nothing
// out of bounds.
__global__ void sparse_state_kernel(AttnParams p, int32_t* table, int64_t nqb, int64_t rows) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t qb = row % nqb, bh = row / nqb;
  const int64_t h = bh % p.sparse_heads, b = bh / p.sparse_heads;
  const int64_t nkb = p.sparse_k_blocks;
  int32_t* st = table + row * nkb;
  for (int64_t kb = 0; kb < nkb; ++kb) st[kb] = kSparseAbsent;
  const int64_t nf = min(int64_t(sparse_count(p.full_num, p.full_num_stride, b, h, qb)),
                         p.full_idx_len);
  for (int32_t s = 0; s < nf; ++s) {
    const int32_t kb = sparse_index(p.full_idx, p.full_idx_stride, b, h, qb, s);
    if (kb >= 0 && kb < nkb) st[kb] = kSparseFull;
  }
  const int64_t np = min(int64_t(sparse_count(p.kv_num, p.kv_num_stride, b, h, qb)),
                         p.kv_idx_len);
  for (int32_t s = 0; s < np; ++s) {
    const int32_t kb = sparse_index(p.kv_idx, p.kv_idx_stride, b, h, qb, s);
    if (kb >= 0 && kb < nkb) st[kb] = s;
  }
}

int64_t query_blocks(const AttnParams& p) {
  return (p.seqlen_q + p.sparse_block_q - 1) / p.sparse_block_q;
}

}  // namespace

int64_t sparse_state_bytes(const AttnParams& p) {
  if (!p.sparse) return 0;
  return p.sparse_batches * p.sparse_heads * query_blocks(p) * p.sparse_k_blocks *
         int64_t(sizeof(int32_t));
}

void sparse_state(AttnParams* p, int32_t* table, cudaStream_t s) {
  const int64_t nqb = query_blocks(*p), rows = p->sparse_batches * p->sparse_heads * nqb;
  const int64_t per_head = nqb * p->sparse_k_blocks;
  p->sparse_state_stride[0] = p->sparse_batches == 1 ? 0 : p->sparse_heads * per_head;
  p->sparse_state_stride[1] = p->sparse_heads == 1 ? 0 : per_head;
  if (rows > 0 && p->sparse_k_blocks > 0)
    sparse_state_kernel<<<static_cast<unsigned>((rows + 127) / 128), 128, 0, s>>>(*p, table, nqb,
                                                                                  rows);
  p->sparse_state = table;
}

}  // namespace cuda
}  // namespace fsdpa
