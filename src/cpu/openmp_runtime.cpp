#include "cpu/openmp_runtime.h"

#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

#if defined(__APPLE__)
#include <mach-o/dyld.h>
#else
#include <link.h>
#endif

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

namespace fsdpa::cpu {
namespace {

// All three entry points from one object (the one defining GOMP_parallel),
// so that a process with two runtimes never mixes them. The handle from
// RTLD_NOLOAD is kept open: the runtime stays loaded while we hold its
// functions.
bool resolve_from(const char* path, OpenMpRuntime* rt) {
  void* h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return false;
  rt->parallel = reinterpret_cast<decltype(rt->parallel)>(dlsym(h, "GOMP_parallel"));
  rt->get_level = reinterpret_cast<decltype(rt->get_level)>(dlsym(h, "omp_get_level"));
  rt->get_max_threads =
      reinterpret_cast<decltype(rt->get_max_threads)>(dlsym(h, "omp_get_max_threads"));
  if (rt->parallel && rt->get_level && rt->get_max_threads) return true;
  dlclose(h);
  return false;
}

bool is_openmp_library(const char* path) {
  const char* slash = strrchr(path, '/');
  const char* base = slash ? slash + 1 : path;
  return strncmp(base, "libgomp", 7) == 0 || strncmp(base, "libiomp", 7) == 0 ||
         strncmp(base, "libomp", 6) == 0;
}

// Paths of the loaded objects that look like an OpenMP runtime (names
// collected first: dlopen must not run inside dl_iterate_phdr).
#if defined(__APPLE__)
std::vector<std::string> openmp_library_paths() {
  std::vector<std::string> paths;
  for (uint32_t i = 0, n = _dyld_image_count(); i < n; ++i)
    if (const char* name = _dyld_get_image_name(i); name && is_openmp_library(name))
      paths.emplace_back(name);
  return paths;
}

// A miss is retried only once the process has loaded more images.
unsigned long long objects_loaded() { return _dyld_image_count(); }
#else
int collect_openmp_libraries(dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name && is_openmp_library(info->dlpi_name))
    static_cast<std::vector<std::string>*>(out)->emplace_back(info->dlpi_name);
  return 0;
}

std::vector<std::string> openmp_library_paths() {
  std::vector<std::string> paths;
  dl_iterate_phdr(collect_openmp_libraries, &paths);
  return paths;
}

// glibc counts every shared object loaded into the process; a miss is
// retried only once that count has moved (a few nanoseconds per call).
int read_load_count(dl_phdr_info* info, size_t size, void* out) {
  if (size >= offsetof(dl_phdr_info, dlpi_adds) + sizeof(info->dlpi_adds))
    *static_cast<unsigned long long*>(out) = info->dlpi_adds;
  return 1;  // the first object carries the count
}

unsigned long long objects_loaded() {
  unsigned long long adds = 0;
  dl_iterate_phdr(read_load_count, &adds);
  return adds;
}
#endif

bool find_runtime(OpenMpRuntime* rt) {
  // In the global scope (PyTorch loads libgomp there through
  // libtorch_global_deps; a program linked with -fopenmp has it too).
  if (void* sym = dlsym(RTLD_DEFAULT, "GOMP_parallel")) {
    Dl_info info{};
    if (dladdr(sym, &info) && info.dli_fname && resolve_from(info.dli_fname, rt)) return true;
  }
  // Else a dependency of a library loaded with RTLD_LOCAL: look for it by name.
  for (const auto& path : openmp_library_paths())
    if (resolve_from(path.c_str(), rt)) return true;
  return false;
}

std::mutex g_mu;  // guards the three below
OpenMpRuntime g_runtime{};
unsigned long long g_looked_at_load_count = 0;
bool g_looked = false;
std::atomic<const OpenMpRuntime*> g_found{nullptr};

}  // namespace

const OpenMpRuntime* loaded_openmp_runtime() {
  if (const OpenMpRuntime* rt = g_found.load(std::memory_order_acquire)) return rt;
  const unsigned long long loads = objects_loaded();
  std::lock_guard<std::mutex> lk(g_mu);
  if (const OpenMpRuntime* rt = g_found.load(std::memory_order_acquire)) return rt;
  if (g_looked && loads == g_looked_at_load_count) return nullptr;
  g_looked = true;
  g_looked_at_load_count = loads;
  if (!find_runtime(&g_runtime)) return nullptr;
  g_found.store(&g_runtime, std::memory_order_release);
  return &g_runtime;
}

}  // namespace fsdpa::cpu
