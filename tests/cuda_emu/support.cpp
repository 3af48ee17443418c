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
