// Output allocation for every kernel (the only new_output): CUDA outputs and small CPU outputs
// come from PyTorch's allocators, large CPU outputs from a cache of buffers.
//
// A large CPU tensor from PyTorch's allocator is often fresh memory whose pages fault in one
// 4 KiB page at a time on first touch: for the tens of MB a batch of skeleton graphs takes,
// the faults cost several times the kernel itself, and a training step repeats the same sizes
// every iteration. So the outputs of at least kCachedBytes come from a cache: a freed buffer is
// kept (up to a limit in all: SKELMAE_CPU_CACHE_MB, default 2048, set by skelmae_ext at import;
// 0 turns the cache off) and handed to the next output of the same size, its pages already
// resident. New buffers of 4 MiB and more are 2 MiB aligned and advised as transparent huge
// pages (Linux): one fault per 2 MiB instead of per 4 KiB on first touch.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace skelmae {

// An uninitialised contiguous tensor of `like`'s shape and options, or an empty one when
// `needed` is false (an output the caller did not ask for).
at::Tensor new_output(const at::Tensor& like, bool needed = true);

// An uninitialised contiguous tensor of the given sizes and options.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held by the cache in buffers no tensor uses.
size_t cached_output_bytes();

// Frees the buffers no tensor uses.
void release_cached_outputs();

// Sets the most bytes the cache keeps in buffers no tensor uses (0: none), from then on.
void set_cached_output_limit(size_t bytes);

}  // namespace skelmae
