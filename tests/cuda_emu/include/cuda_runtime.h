// CUDA runtime emulation for tests: runs a .cu file's kernels on the CPU, one thread after
// another (tests/cuda_emu/build.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)`
// into `pe_emu::launch(grid, block, [&] { kernel(args); })`). Threads never run concurrently, so
// atomics are plain read-modify-writes; races and barriers are out of its reach. What it does
// check: every thread's indexing and maths, the launch configurations (an empty grid is an
// error, as on a GPU), and the host-side wrappers.
#pragma once

#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
  unsigned x, y, z;
};

namespace pe_emu {
inline thread_local uint3 thread_idx, block_idx;
inline thread_local dim3 block_dim, grid_dim;
inline thread_local cudaError_t last_error = cudaSuccess;

template <typename F>
void launch(dim3 grid, dim3 block, F&& body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 ||
      block.x * block.y * block.z > 1024 || grid.y > 65535 || grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  grid_dim = grid;
  block_dim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              block_idx = {bx, by, bz};
              thread_idx = {tx, ty, tz};
              body();
            }
}
}  // namespace pe_emu

#define threadIdx (::pe_emu::thread_idx)
#define blockIdx (::pe_emu::block_idx)
#define blockDim (::pe_emu::block_dim)
#define gridDim (::pe_emu::grid_dim)

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = pe_emu::last_error;
  pe_emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidValue ? "invalid argument"
                                                                     : "invalid configuration argument";
}

template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// Round-to-nearest intrinsics of the device are the plain IEEE operations here.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
