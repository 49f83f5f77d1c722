// make_plan: the CUDA backend's one decision per call (plan.h), with the
// reason for each choice; the override FLASHSDPA_CUDA_FORCE; the plan as
// text for explain.
#include "cuda/plan.h"

#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "cuda/hopper/hopper.h"
#include "cuda/launch.h"
#include "cuda/tc_buckets.h"
#include "flashsdpa/flashsdpa.h"

namespace fsdpa {
namespace cuda {
namespace {

// Appends one line to plan.why.
void note(Plan& plan, const char* fmt, ...) {
  if (!plan.with_reasons) return;
  const size_t n = strlen(plan.why);
  if (n + 2 >= sizeof plan.why) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(plan.why + n, sizeof plan.why - n - 1, fmt, ap);
  va_end(ap);
  const size_t m = strlen(plan.why);
  plan.why[m] = '\n';
  plan.why[m + 1] = '\0';
}

// The Hopper kernels serve head dims below their own on zero columns
// (hopper_kernel_dim): say so when a call's D or Dv is one of those.
void note_zero_columns(Plan& plan, const AttnParams& p) {
  if (plan.head_bucket == p.head_dim && plan.head_bucket == p.head_dim_v) return;
  note(plan, "D %d / Dv %d on the D %d kernel (columns past D / Dv zero-filled by TMA, not stored)",
       static_cast<int>(p.head_dim), static_cast<int>(p.head_dim_v), plan.head_bucket);
}

int bucket_for(int64_t d, int64_t dv) {
  const int64_t m = d > dv ? d : dv;
#define FSDPA_BUCKET(B) \
  if (m <= B) return B;
  FSDPA_TC_BUCKETS(FSDPA_BUCKET)
#undef FSDPA_BUCKET
  return 0;
}

// Key splits of the sm_80 forward: split when the query blocks cannot fill
// the GPU and the key range is long.
int sm80_splits(const AttnParams& p, int dp, int sms, const Override& ov, Plan& plan) {
  if (ov.splits > 0) {
    note(plan, "splits %d: forced (FLASHSDPA_CUDA_FORCE)", ov.splits);
    return ov.splits;
  }
  const int bm = tc_fwd_block_m(dp);
  const int bn = dp <= 128 ? 64 : 32;  // the split-KV kernel's keys per step
  const int64_t ctas = (p.seqlen_q + bm - 1) / bm * p.heads_q * p.batch;
  const int64_t nkb = (p.seqlen_k + bn - 1) / bn;
  if (ctas >= sms) {
    note(plan, "splits 1: %lld query blocks of %d rows fill the %d SMs", (long long)ctas, bm, sms);
    return 1;
  }
  if (nkb < 8) {
    note(plan, "splits 1: %lld key blocks of %d (< 8) are too few to split", (long long)nkb, bn);
    return 1;
  }
  // About two full waves of 2 blocks per SM (measured on an H100, decode
  // B*H = 128, Sk = 32k: 4 or 8 splits 0.84 ms, 5 splits 0.96 ms (a partial
  // third wave), 16 splits 0.92 ms).
  int64_t n = 4 * sms / ctas;
  if (n > nkb / 4) n = nkb / 4;
  if (n > 64) n = 64;
  // Keep the fp32 partials under 1 GiB.
  while (n > 1 && n * p.total_q * p.heads_q * dp * 4 > (int64_t(1) << 30)) n /= 2;
  const int splits = n < 2 ? 1 : static_cast<int>(n);
  note(plan, "splits %d: %lld query blocks on %d SMs, %lld key blocks (two waves of 2 blocks per SM)",
       splits, (long long)ctas, sms, (long long)nkb);
  return splits;
}

size_t carve(Plan& plan, Slice& s, size_t bytes) {
  if (bytes == 0) return 0;
  s.off = (plan.workspace_bytes + 255) / 256 * 256;
  s.bytes = bytes;
  plan.workspace_bytes = s.off + bytes;
  return bytes;
}

void fail(Plan& plan, int status, const char* msg) {
  plan.error = msg;
  plan.error_status = status;
  note(plan, "error: %s", msg);
}

// The forced family cannot take the call: the message names the reason.
void forced_out_of_scope(Plan& plan, const char* family, const char* why) {
  static thread_local char msg[256];
  snprintf(msg, sizeof msg, "FLASHSDPA_CUDA_FORCE=%s: the call is outside its scope (%s)", family,
           why);
  fail(plan, FSDPA_ERROR_UNSUPPORTED, msg);
}

}  // namespace

const char* family_name(Family f) {
  switch (f) {
    case Family::simt: return "simt";
    case Family::sm80: return "sm80";
    case Family::decode: return "decode";
    case Family::hopper: return "hopper";
  }
  return "?";
}

Override read_override() {
  Override ov;
  const char* v = getenv("FLASHSDPA_CUDA_FORCE");
  if (v == nullptr || *v == '\0') return ov;
  snprintf(ov.text, sizeof ov.text, "%s", v);
  bool first = true;
  for (const char* at = v; *at != '\0';) {
    // The next comma-separated token.
    char tok[32];
    const char* end = strchr(at, ',');
    const size_t n = end != nullptr ? size_t(end - at) : strlen(at);
    snprintf(tok, sizeof tok, "%.*s", int(n < sizeof tok - 1 ? n : sizeof tok - 1), at);
    at += end != nullptr ? n + 1 : n;
    if (first) {
      first = false;
      static const Family fams[] = {Family::simt, Family::sm80, Family::decode, Family::hopper};
      if (strcmp(tok, "auto") == 0) continue;
      bool found = false;
      for (Family f : fams)
        if (strcmp(tok, family_name(f)) == 0) {
          ov.family = f;
          ov.family_set = found = true;
        }
      if (found) continue;
    }
    if (strncmp(tok, "splits=", 7) == 0 && atoi(tok + 7) > 0) {
      ov.splits = atoi(tok + 7) > 256 ? 256 : atoi(tok + 7);
    } else if (strcmp(tok, "mask_skip=0") == 0) {
      ov.mask_skip = false;
    } else {
      ov.error =
          "FLASHSDPA_CUDA_FORCE: expected FAMILY[,splits=N][,mask_skip=0] with FAMILY one of "
          "auto, simt, sm80, decode, hopper";
      return ov;
    }
  }
  return ov;
}

DeviceInfo device_info(int dev) {
  static std::mutex mu;
  static DeviceInfo cache[64];
  static bool known[64];
  if (dev < 0 || dev >= 64) return DeviceInfo{};
  std::lock_guard<std::mutex> lock(mu);
  if (!known[dev]) {
    DeviceInfo d;
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && n > 0)
      d.sms = n;
    else
      (void)cudaGetLastError();
    d.hopper = hopper_fwd_available(dev);
    cache[dev] = d;
    known[dev] = true;
  }
  return cache[dev];
}

// No Hopper kernel reads block lists yet; the sm80 kernels skip the blocks
// the lists leave out and test elements only in blocks they mark partial.
static constexpr const char* kHopperNoSparse =
    "block-sparse mask (the Hopper kernels do not read block lists yet; the sm80 kernels do)";

// Block lists: expanded into a state table in the workspace that the sm80
// and simt kernels index in O(1) per tile or element, from the query side
// and from the key side (the backward's dK/dV walk) alike.
static void plan_block_sparse(const AttnParams& p, Plan& plan) {
  if (!p.sparse) return;
  const int64_t bytes = sparse_state_bytes(p);
  carve(plan, plan.sparse, size_t(bytes));
  note(plan, "block-sparse: lists of %lldx%lld blocks expanded into a %lld-byte state table; "
       "tiles no list names are skipped; %s",
       (long long)p.sparse_block_q, (long long)p.sparse_block_k, (long long)bytes,
       sparse_band_only(p) ? "no element masks and 128-multiple blocks: band-only variant"
                           : "element masks or blocks not multiples of 128: general variant");
}

Plan make_plan(const AttnParams& p, bool backward, const DeviceInfo& dev, const Override& ov,
               bool with_reasons) {
  Plan plan;
  plan.backward = backward;
  plan.with_reasons = with_reasons;
  if (ov.error != nullptr) {
    fail(plan, FSDPA_ERROR_INVALID_ARGUMENT, ov.error);
    return plan;
  }
  const bool forced = ov.family_set;
  const Family want = ov.family;
  const int dp = bucket_for(p.head_dim, p.head_dim_v);
  plan.head_bucket = dp;

  // 0. The KV-cache parameters: the simt, decode and sm80 forwards read the
  // cache in place (cache rows, per-sequence key ranges, pages of any size
  // looked up per row: no gather copy); the Hopper forward does not (its
  // scope says so) and no backward does (the cache is for inference).
  if (uses_kv_cache(p)) {
    if (backward) {
      fail(plan, FSDPA_ERROR_UNSUPPORTED,
           "block_table / seqused_k / cache_batch_idx / cache_leftpad: the KV-cache parameters "
           "are for the forward only");
      return plan;
    }
    // Cache positions and page rows are int32 in the kernels.
    if (p.kv_capacity >= (int64_t(1) << 31) || p.seqlen_k >= (int64_t(1) << 31)) {
      fail(plan, FSDPA_ERROR_UNSUPPORTED, "k: a KV cache of 2^31 positions or more per sequence");
      return plan;
    }
    if (p.block_table)
      note(plan, "kv cache: paged (%lld pages of %lld rows), read through the page table in place",
           (long long)p.num_pages, (long long)p.page_size);
    else
      note(plan, "kv cache: %s rows read in place", p.cache_batch_idx ? "selected cache" : "cache");
    note(plan, "kv cache: key ranges per sequence%s%s; values are the caller's contract%s",
         p.seqused_k ? " from seqused_k" : "", p.cache_leftpad ? ", after cache_leftpad" : "",
         p.check_finite ? " (checked on the host first: check_finite = 1)" : "");
  }

  // 1. SIMT: fp32 inputs, or forced.
  const char* simt_why = p.dtype == DType::f32 ? "fp32 inputs (plain fp32 arithmetic, no TF32)"
                         : dp == 0             ? "head dim past the tensor-core buckets"
                         : forced && want == Family::simt ? "forced (FLASHSDPA_CUDA_FORCE)"
                                                          : nullptr;
  if (simt_why != nullptr) {
    plan.family = Family::simt;
    note(plan, "family simt: %s", simt_why);
    if (forced && want != Family::simt && want != Family::sm80)
      forced_out_of_scope(plan, family_name(want), simt_why);
    if (backward) carve(plan, plan.dsum, size_t(p.total_q) * p.heads_q * sizeof(float));
    plan_block_sparse(p, plan);
    return plan;
  }
  note(plan, "simt: not needed (%s, head bucket %d)", p.dtype == DType::f16 ? "fp16" : "bf16", dp);
  const bool mask = p.mask_kind != MaskKind::none;
  const int64_t mask_bytes = mask ? mask_tiles_bytes(p) : 0;

  if (!backward) {
    // 2. Decode: a few query rows per GQA group over any key range.
    const char* decode_why = decode_scope(p);
    if (forced && want == Family::decode && decode_why != nullptr) {
      forced_out_of_scope(plan, "decode", decode_why);
      return plan;
    }
    if (decode_why == nullptr && (!forced || want == Family::decode)) {
      plan.family = Family::decode;
      plan.head_bucket = static_cast<int>(p.head_dim);
      note(plan, "family decode: %s", forced ? "forced (FLASHSDPA_CUDA_FORCE)" : "in scope");
      if (ov.splits > 0) {
        plan.splits = ov.splits;
        note(plan, "splits %d: forced (FLASHSDPA_CUDA_FORCE)", plan.splits);
      } else {
        plan.splits = decode_splits(p, dev.sms);
        note(plan, "splits %d: the wave model of decode.cu on %d SMs", plan.splits, dev.sms);
      }
      if (plan.splits > 1) {
        const size_t rows = size_t(p.total_q) * p.heads_q;
        carve(plan, plan.opart, plan.splits * rows * p.head_dim * sizeof(float));
        carve(plan, plan.lsepart, plan.splits * rows * sizeof(float));
      }
      return plan;
    }
    note(plan, "decode: %s", decode_why != nullptr ? decode_why : "not forced");

    // 3. Hopper, unless the sm_80 kernels would split the keys.
    const int splits = sm80_splits(p, dp, dev.sms, ov, plan);
    const char* hopper_why = !dev.hopper ? "not a 9.x GPU with sm_90a code in this build"
                             : p.sparse ? kHopperNoSparse
                                        : hopper_fwd_scope(p);
    if (hopper_why == nullptr && splits > 1 && !(forced && want == Family::hopper))
      hopper_why = "the sm_80 kernels split the keys (the Hopper forward does not)";
    if (hopper_why == nullptr && forced && want != Family::hopper) hopper_why = "not forced";
    if (forced && want == Family::hopper && hopper_why != nullptr) {
      forced_out_of_scope(plan, "hopper", hopper_why);
      return plan;
    }
    if (hopper_why == nullptr) {
      plan.family = Family::hopper;
      plan.head_bucket = hopper_kernel_dim(p);
      plan.splits = 1;
      plan.hopper_warpgroups = hopper_fwd_warpgroups(p);
      plan.hopper_dynamic = hopper_fwd_dynamic(p);
      note_zero_columns(plan, p);
      note(plan, "family hopper: in scope%s; %d consumer warpgroups, %s tile schedule",
           forced ? " (forced)" : "", plan.hopper_warpgroups,
           plan.hopper_dynamic ? "dynamic (longest tile first)" : "static");
      if (plan.hopper_dynamic) carve(plan, plan.counter, sizeof(int));
    } else {
      plan.family = Family::sm80;
      plan.splits = splits;
      note(plan, "hopper: %s", hopper_why);
      note(plan, "family sm80: tensor-core kernels, head bucket %d", dp);
      if (splits > 1) {
        const size_t rows = size_t(p.total_q) * p.heads_q;
        carve(plan, plan.opart, splits * rows * dp * sizeof(float));
        carve(plan, plan.lsepart, splits * rows * sizeof(float));
      }
    }
  } else {
    if (forced && want == Family::decode) note(plan, "decode: forward only");
    carve(plan, plan.dsum, size_t(p.total_q) * p.heads_q * sizeof(float));
    const char* hopper_why = !dev.hopper ? "not a 9.x GPU with sm_90a code in this build"
                             : p.sparse ? kHopperNoSparse
                                        : hopper_bwd_scope(p);
    if (hopper_why == nullptr && forced && want == Family::sm80) hopper_why = "not forced";
    if (forced && want == Family::hopper && hopper_why != nullptr) {
      forced_out_of_scope(plan, "hopper", hopper_why);
      return plan;
    }
    if (hopper_why == nullptr) {
      plan.family = Family::hopper;
      plan.head_bucket = hopper_kernel_dim(p);
      plan.dq_accumulate = true;
      plan.dq_cols = plan.head_bucket;
      plan.head_splits = hopper_bwd_head_splits(p, dev.sms);
      if (plan.head_splits > 1) {
        carve(plan, plan.dkv, hopper_bwd_dkv_bytes(p, plan.head_splits));
        note(plan, "GQA group of %d query heads over %d CTAs per key block (too few key blocks "
             "for %d SMs), dK/dV added in fp32", static_cast<int>(p.heads_q / p.heads_k),
             plan.head_splits, dev.sms);
      }
      note_zero_columns(plan, p);
      note(plan, "family hopper: in scope%s; dQ by TMA reduces into fp32%s", forced ? " (forced)" : "",
           p.deterministic ? ", in key-block turns (deterministic)" : "");
      const size_t dq = size_t(p.total_q) * p.heads_q * plan.dq_cols * sizeof(float);
      carve(plan, plan.dq, hopper_bwd_workspace_bytes(p));
      if (plan.dq.bytes > dq) {  // the turn counters follow dQ directly
        plan.dq_turns.off = plan.dq.off + dq;
        plan.dq_turns.bytes = plan.dq.bytes - dq;
      }
    } else {
      plan.family = Family::sm80;
      plan.dq_accumulate = !p.deterministic;
      plan.dq_cols = dp;
      note(plan, "hopper: %s", hopper_why);
      note(plan, "family sm80: head bucket %d; %s", dp,
           p.deterministic ? "dQ by its own kernel (deterministic, 7 products)"
                           : "dQ by fp32 atomics in the dK/dV kernel (5 products)");
      if (plan.dq_accumulate)
        carve(plan, plan.dq, size_t(p.total_q) * p.heads_q * dp * sizeof(float));
    }
  }
  if (mask) {
    plan.mask_tiles = mask_bytes > 0 && ov.mask_skip;
    note(plan, "mask tiles: %s", plan.mask_tiles ? "classified per 32x32 tile, masked blocks skipped"
                                 : "off (FLASHSDPA_CUDA_FORCE mask_skip=0): per-element path");
    if (plan.mask_tiles) carve(plan, plan.flags, size_t(mask_bytes));
  }
  plan_block_sparse(p, plan);
  return plan;
}

void format_plan(const Plan& plan, const Override& ov, char* buf, size_t size) {
  if (size == 0) return;
  snprintf(buf, size,
           "backend cuda, %s: family %s, head bucket %d, splits %d, workspace %zu bytes\n"
           "override: %s\n%s",
           plan.backward ? "backward" : "forward", family_name(plan.family), plan.head_bucket,
           plan.splits, plan.workspace_bytes,
           ov.text[0] ? ov.text : "none (FLASHSDPA_CUDA_FORCE unset)", plan.why);
}

}  // namespace cuda
}  // namespace fsdpa
