// Runtime choice of the instruction set for the CPU kernels' hot loops.
//
// The library is built for the baseline x86-64 (SSE2) so that it runs on any x86-64 CPU, as
// PyTorch does; like PyTorch, it picks wider vectors at run time: run_rows compiles the loop
// body a second time for AVX2 + FMA (GCC's target attribute, the body forced inline into that
// copy) and calls that copy where the CPU has them.
#pragma once

#include <atomic>
#include <cstdint>

#if defined(__GNUC__) && defined(__x86_64__)
#define SKELMAE_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SKELMAE_INLINE_BODY __attribute__((always_inline))
#else
#define SKELMAE_TARGET_AVX2
#define SKELMAE_INLINE_BODY
#endif

namespace skelmae {

// Whether the baseline copies were asked for (skelmae_ext sets it at import from
// SKELMAE_CPU_BASELINE): for tests, and to compare.
inline std::atomic<bool>& cpu_baseline_requested() {
  static std::atomic<bool> requested{false};
  return requested;
}

// Whether run_rows takes the AVX2 + FMA copies: the CPU has them and the baseline was not asked for.
inline bool cpu_uses_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool available = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return available && !cpu_baseline_requested().load(std::memory_order_relaxed);
#else
  return false;
#endif
}

template <typename Body>
SKELMAE_TARGET_AVX2 void run_rows_avx2(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}

template <typename Body>
void run_rows_baseline(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}

// body(begin, end), a lambda declared SKELMAE_INLINE_BODY, on the widest vectors available.
template <typename Body>
void run_rows(const Body& body, int64_t begin, int64_t end) {
  if (cpu_uses_avx2()) {
    run_rows_avx2(body, begin, end);
  } else {
    run_rows_baseline(body, begin, end);
  }
}

}  // namespace skelmae
