// What each backend supports, feature by feature: the single declaration
// from which the drivers filter the case registry (runs_on) and from which
// tools/support_matrix.cpp writes the README's support matrix, notes
// included. A feature row names the aspects a backend's claim stands on
// (e.g. "causal bottom-right"); the generator fails if a backend claims a
// feature (yes or pending) without a registry case of every aspect that its
// driver runs. Rows tested outside the C++ drivers (the Python API) name the
// test file instead.
#pragma once

#include <vector>

#include "case_registry.h"

namespace fsdpa_cases {

enum class Support {
  yes,       // implemented; the driver runs its cases ("✓")
  pending,   // implemented, refused until its cases pass on the hardware:
             // the driver runs them, the library raises ("– (raises: note)")
  raises,    // not implemented: the library raises, the driver skips ("– (raises)")
  untested,  // implemented, no driver runs it: the note says why (shown as is)
};

struct Cell {
  Support support;
  const char* note = "";  // "✓ note", "– (raises: note)", or the whole cell (untested)
};

struct Aspect {
  const char* what;
  bool (*in)(const Case&);
};

struct Feature {
  const char* label;            // the matrix's row label (Markdown)
  std::vector<Aspect> aspects;  // empty: tested outside the registry
  const char* tested_by;        // those rows: the test file(s), from the repository root
  Cell cpu, cuda, metal;
  const Cell& cell(Backend b) const { return b == kCpu ? cpu : b == kCuda ? cuda : metal; }
  // Whether `c` uses this feature (any of its aspects).
  bool used_by(const Case& c) const;
};

const std::vector<Feature>& support_table();

}  // namespace fsdpa_cases
