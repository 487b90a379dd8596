// CPU helper: channel tiling.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/host_device.h"

namespace skelmae {

// Calls fn(width, c0) with width = std::integral_constant<int, kCpuTile> over the full tiles of
// [0, channels), then with width 1 over the remaining channels. The tile width is a compile-time
// constant, so the loops inside the shared tile functions vectorise.
template <typename Fn>
inline void for_each_channel_tile(int64_t channels, Fn&& fn) {
  int64_t c0 = 0;
  for (; c0 + kCpuTile <= channels; c0 += kCpuTile) fn(std::integral_constant<int, kCpuTile>{}, c0);
  for (; c0 < channels; ++c0) fn(std::integral_constant<int, 1>{}, c0);
}

}  // namespace skelmae
