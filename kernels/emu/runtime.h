// The host side of the emulator: launching a kernel (see cuda_emu.h, runtime.cpp).
#pragma once
#include <functional>
#include <string>

#include "cuda_emu.h"

namespace emu {
struct LaunchResult {
  std::string error;  // empty on success
};
// Run `body` (the kernel call, with its arguments bound) once per CUDA thread of every block of
// `grid`, blocks spread over EMU_THREADS host threads, thread order shuffled by `seed`.
LaunchResult launch(dim3 grid, dim3 block, size_t dyn_smem, uint64_t seed,
                    const std::function<void()>& body);
}  // namespace emu
