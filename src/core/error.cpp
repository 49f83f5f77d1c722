#include "core/error.h"

#include <stdio.h>

#include <string>

namespace fsdpa {
namespace {
thread_local std::string g_last_error;
}

fsdpa_status set_error(fsdpa_status status, const char* fmt, ...) {
  char buf[FSDPA_MAX_MESSAGE_SIZE];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  g_last_error = buf;
  return status;
}

void clear_error() { g_last_error.clear(); }

const char* last_error() { return g_last_error.c_str(); }

}  // namespace fsdpa
