// Output allocation for the CPU kernels.
//
// A large CPU tensor is a fresh mmap whose pages fault in one 4 KiB page at a time on first
// touch: for the tens of MB a batch of skeleton graphs takes, the faults cost several times the
// kernel itself. Asking for transparent huge pages on the buffer (Linux, THP in "madvise" or
// "always" mode) cuts that cost about fivefold. Only our own fresh outputs are advised.
#pragma once

#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace skelmae {

inline void advise_huge_pages(const at::Tensor& buffer) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(1) << 21;
  const auto begin = reinterpret_cast<uintptr_t>(buffer.data_ptr());
  const uintptr_t end = begin + buffer.nbytes();
  const uintptr_t aligned_begin = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t aligned_end = end & ~(kHugePage - 1);
  if (aligned_end >= aligned_begin + 2 * kHugePage) {
    // Advisory only: failure (THP disabled) leaves ordinary pages.
    madvise(reinterpret_cast<void*>(aligned_begin), aligned_end - aligned_begin, MADV_HUGEPAGE);
  }
#endif
}

// An uninitialised contiguous tensor of `like`'s shape and options, or an empty one when
// `needed` is false (an output the caller did not ask for).
inline at::Tensor new_output(const at::Tensor& like, bool needed = true) {
  if (!needed) return like.new_empty({0});
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Contiguous);
  advise_huge_pages(out);
  return out;
}

}  // namespace skelmae
