// Thread-local error reporting behind fsdpa_last_error().
#pragma once

#include <stdarg.h>

#include "flashsdpa/flashsdpa.h"

namespace fsdpa {

// Records a printf-style message for fsdpa_last_error() and returns status,
// so a failure reads `return set_error(FSDPA_ERROR_..., "q: ...", ...);`.
fsdpa_status set_error(fsdpa_status status, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
void clear_error();
const char* last_error();

}  // namespace fsdpa
