// check_finite for Metal memory the CPU can read (see finite.cpp).
#pragma once

#include "core/attn_params.h"
#include "flashsdpa/flashsdpa.h"

namespace fsdpa::metal {

// check_finite for Metal memory the CPU can read (MTLStorageModeShared, the
// usual case on Apple silicon; the host waits for the queue first): scans
// one input of a validated call. `which` is FSDPA_BUF_Q, _K, _V or _DOUT;
// `data` the CPU address of that tensor. Returns FSDPA_OK or sets the
// core's FSDPA_ERROR_NONFINITE_INPUT message.
fsdpa_status check_finite_input(const AttnParams& p, int which, const void* data);

}  // namespace fsdpa::metal
