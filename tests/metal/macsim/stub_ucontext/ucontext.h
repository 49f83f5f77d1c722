// Models macOS's <ucontext.h>, which stops compilation unless _XOPEN_SOURCE
// is defined ("The deprecated ucontext routines require _XOPEN_SOURCE to be
// defined"), then includes the real header of this system. Used by
// check_macsim.py to compile the emulator's runtime.cpp as a Mac would.
#pragma once
#if !defined(_XOPEN_SOURCE)
#error The deprecated ucontext routines require _XOPEN_SOURCE to be defined
#endif
#include_next <ucontext.h>
