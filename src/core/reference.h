// The fp64 reference of the attention semantics (host memory only).
#pragma once

#include "core/attn_params.h"

namespace fsdpa {

void reference_forward(const AttnParams& p);
void reference_backward(const AttnParams& p);
void reference_dropout_mask(const AttnParams& p);  // writes p.out as uint8 [B,Hq,Sq,Sk]

}  // namespace fsdpa
