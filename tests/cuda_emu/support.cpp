// What the emulated build tells its tests (tests/cuda_emu/test_cuda_emulated.py reads these C
// symbols with ctypes from the built module): the __CUDA_ARCH__ each unit was compiled with, how
// often each emulated intrinsic ran, and the device rounding helpers of pyengine/ray_march.h.
//
// build.py compiles this file as it does the .cu units: as a device pass, __CUDACC__ and
// __CUDA_ARCH__ defined and <cuda_runtime.h> included ahead of this text.
#include "pyengine/ray_march.h"

#define PE_EMU_EXPORT extern "C" __attribute__((visibility("default")))

PE_EMU_EXPORT int pe_emu_n_units() {
  const int n = pe_emu::n_units.load();
  return n < pe_emu::kMaxUnits ? n : pe_emu::kMaxUnits;
}
PE_EMU_EXPORT const char* pe_emu_unit_file(int i) { return pe_emu::units[i].file; }
PE_EMU_EXPORT int pe_emu_unit_arch(int i) { return pe_emu::units[i].arch; }

PE_EMU_EXPORT int pe_emu_n_counters() { return pe_emu::kNumCounters; }
PE_EMU_EXPORT const char* pe_emu_counter_name(int i) { return pe_emu::kCounterNames[i]; }
PE_EMU_EXPORT uint64_t pe_emu_counter(int i) { return pe_emu::counters[i].load(); }
PE_EMU_EXPORT void pe_emu_reset_counters() {
  for (auto& c : pe_emu::counters) c.store(0);
}

// a * b + c through pe::rn_mul / pe::rn_add: two roundings, never one fused multiply-add.
PE_EMU_EXPORT float pe_emu_rn_mul_add(float a, float b, float c) { return pe::rn_add(pe::rn_mul(a, b), c); }
PE_EMU_EXPORT float pe_emu_rn_div(float a, float b) { return pe::rn_div(a, b); }
PE_EMU_EXPORT float pe_emu_rn_rcp(float a) { return pe::rn_rcp(a); }

// atomicAdd on a float2 that is 4 but not 8-byte aligned: the error a GPU reports (716,
// misaligned address), or -1 where the architecture has no vector atomics.
PE_EMU_EXPORT int pe_emu_misaligned_float2_atomic() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  alignas(16) float buf[4] = {};
  cudaGetLastError();
  atomicAdd(reinterpret_cast<float2*>(buf + 1), make_float2(1.0f, 1.0f));
  const int err = cudaGetLastError();
  atomicAdd(reinterpret_cast<float2*>(buf + 2), make_float2(1.0f, 1.0f));
  return err == 0 || cudaGetLastError() != 0 || buf[2] != 1.0f ? -2 : err;
#else
  return -1;
#endif
}

// Block barriers and dynamic shared memory (launch_coop): each block reverses its slice of `in`
// through shared memory, so every thread reads a slot that another thread wrote before the
// barrier (slots of threads past n hold -7). With early_exit, thread 0 of each block returns
// before the barrier. Returns the launch's error (0, 719 for a barrier not every thread reaches,
// 1 for more shared memory than a launch may ask for).
__global__ void pe_emu_reverse_kernel(const int* in, int* out, int n, int early_exit) {
  extern __shared__ __align__(16) int reverse_smem[];
  const int nt = blockDim.x * blockDim.y, t = threadIdx.y * blockDim.x + threadIdx.x;
  const int i = blockIdx.x * nt + t;
  if (early_exit && t == 0) return;
  reverse_smem[t] = i < n ? in[i] : -7;
  __syncthreads();
  if (i < n) out[i] = reverse_smem[nt - 1 - t];
}

PE_EMU_EXPORT int pe_emu_block_reverse(const int* in, int* out, int n, int bx, int by, int early_exit,
                                       long smem_bytes) {
  cudaGetLastError();
  const int nt = bx * by;
  pe_emu_reverse_kernel<<<dim3((n + nt - 1) / nt), dim3(bx, by), static_cast<size_t>(smem_bytes), nullptr>>>(
      in, out, n, early_exit);
  return cudaGetLastError();
}

// Warp shuffles (launch_coop): for each segment of `width` lanes, every lane returns its inclusive
// prefix sum (__shfl_up_sync), the segment's total (__shfl_xor_sync), its right neighbour's value
// (__shfl_down_sync; the last lane keeps its own) and the segment's first value (__shfl_sync).
// With early_exit, lane 3 of each warp returns before the shuffles that name it.
__global__ void pe_emu_shuffle_kernel(const int* in, int* out, int n, int width, int early_exit) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  if (early_exit && lane == 3) return;
  const unsigned mask = 0xffffffffu;
  const int v = t < n ? in[t] : 0;
  int incl = v, total = v;
  for (int o = 1; o < width; o *= 2) {
    const int u = __shfl_up_sync(mask, incl, o, width);
    if ((lane & (width - 1)) >= o) incl += u;
  }
  for (int o = width / 2; o > 0; o /= 2) total += __shfl_xor_sync(mask, total, o, width);
  const int right = __shfl_down_sync(mask, v, 1, width);
  const int first = __shfl_sync(mask, v, 0, width);
  if (t < n) {
    out[4 * t] = incl;
    out[4 * t + 1] = total;
    out[4 * t + 2] = right;
    out[4 * t + 3] = first;
  }
}

PE_EMU_EXPORT int pe_emu_shuffles(const int* in, int* out, int n, int block, int width, int early_exit) {
  cudaGetLastError();
  pe_emu_shuffle_kernel<<<dim3((n + block - 1) / block), dim3(block), 0, nullptr>>>(in, out, n, width, early_exit);
  return cudaGetLastError();
}
