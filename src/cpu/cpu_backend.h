// Entry points of the CPU backend (registered in cpu_backend.cpp).
#pragma once

#include "core/attn_params.h"
#include "core/merge.h"
#include "flashsdpa/flashsdpa.h"

namespace fsdpa::cpu {

fsdpa_status forward(const AttnParams& p);
fsdpa_status backward(const AttnParams& p);
fsdpa_status merge(const MergeParams& m);

}  // namespace fsdpa::cpu
