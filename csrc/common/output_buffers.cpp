// The cache of large CPU output buffers (see output_buffers.h).
#include "output_buffers.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace skelmae {
namespace {

constexpr size_t kCachedBytes = size_t(1) << 20;  // smaller outputs: PyTorch's allocator
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugePageMinBytes = size_t(4) << 20;

constexpr size_t kDefaultLimitBytes = size_t(2048) << 20;

void* allocate(size_t bytes) {
  const size_t alignment = bytes >= kHugePageMinBytes ? kHugePage : 64;
  void* data = std::aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
  TORCH_CHECK(data != nullptr, "skelmae_ext: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == kHugePage) madvise(data, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);  // advisory
#endif
  return data;
}

class BufferCache {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_.find(bytes);
      if (found != free_.end()) {
        void* data = found->second;
        free_.erase(found);
        free_bytes_ -= bytes;
        return data;
      }
    }
    return allocate(bytes);
  }

  void give(void* data, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (free_bytes_ + bytes <= limit_) {
        free_.emplace(bytes, data);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(data);
  }

  size_t free_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return free_bytes_;
  }

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
  }

  void release() {
    std::vector<void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& entry : free_) blocks.push_back(entry.second);
      free_.clear();
      free_bytes_ = 0;
    }
    for (void* data : blocks) std::free(data);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // by size: a step asks for the same sizes again
  size_t free_bytes_ = 0;
  size_t limit_ = kDefaultLimitBytes;
};

// Never destroyed: tensors may outlive static destruction at interpreter exit.
BufferCache& cache() {
  static BufferCache* instance = new BufferCache();
  return *instance;
}

}  // namespace

at::Tensor new_output(const at::Tensor& like, bool needed) {
  if (!needed) return like.new_empty({0});
  return new_output(like.sizes(), like.options());
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (bytes < kCachedBytes || options.device().type() != at::kCPU) {
    return at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
  }
  void* data = cache().take(bytes);
  return at::from_blob(data, sizes, [bytes](void* p) { cache().give(p, bytes); }, options);
}

size_t cached_output_bytes() { return cache().free_bytes(); }

void release_cached_outputs() { cache().release(); }

void set_cached_output_limit(size_t bytes) { cache().set_limit(bytes); }

}  // namespace skelmae
