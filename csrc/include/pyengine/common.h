// Device-portable building blocks shared by the CPU (OpenMP) and CUDA kernels.
//
// Everything here is header-only and free of torch headers, so the very same per-element
// maths compiles with g++ for csrc/cpu and with nvcc for csrc/cuda.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PE_HD __host__ __device__ __forceinline__
#define PE_DEVICE_CODE 1
#else
#define PE_HD inline
#endif

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// The CUDA launchers are declared (in each op's header) where cudaStream_t exists: in .cu files
// and in the host code of a CUDA build.
#if defined(__CUDACC__) || defined(PE_WITH_CUDA)
#include <cuda_runtime.h>
#define PE_CUDA_LAUNCHERS 1
#endif

namespace pe {

// Storage of float16 / bfloat16 tables: the raw 16 bits. c10::Half (host compiler) and __half
// (nvcc) are different types, so launchers that both sides name take these instead; the host
// passes a Half / BFloat16 tensor's data pointer, the device converts with the CUDA intrinsics.
struct F16Storage {
  uint16_t bits;
};
struct BF16Storage {
  uint16_t bits;
};

// Converting loads: tables may be stored in half / bfloat16 but maths is float or double.
template <typename T>
PE_HD T load_as(float v) { return static_cast<T>(v); }
template <typename T>
PE_HD T load_as(double v) { return static_cast<T>(v); }
#if defined(__CUDACC__)
template <typename T>
PE_HD T load_as(F16Storage v) { return static_cast<T>(__half2float(__ushort_as_half(v.bits))); }
template <typename T>
PE_HD T load_as(BF16Storage v) {
  return static_cast<T>(__bfloat162float(__ushort_as_bfloat16(v.bits)));
}
#endif

#if defined(__CUDACC__)
// An aligned vector load (V: float2, float4, uint32_t, uint2, uint4): the caller guarantees that p
// is aligned to sizeof(V); the test emulator checks it.
template <typename V>
__device__ __forceinline__ V load_vec(const void* p) {
#if defined(PE_EMULATE_CUDA)
  ::pe_emu::check_vector_load(p, alignof(V));
#endif
  return *reinterpret_cast<const V*>(p);
}
#endif

template <typename T>
PE_HD void store_to(float* p, T v) { *p = static_cast<float>(v); }
template <typename T>
PE_HD void store_to(double* p, T v) { *p = static_cast<double>(v); }
#if defined(__CUDACC__)
template <typename T>
PE_HD void store_to(F16Storage* p, T v) {
  p->bits = __half_as_ushort(__float2half_rn(static_cast<float>(v)));
}
template <typename T>
PE_HD void store_to(BF16Storage* p, T v) {
  p->bits = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v)));
}
#endif

// Portable maths: the device function in nvcc's device pass, std:: on the host, for float and
// double alike (the CPU and CUDA kernels must round the same way).
#if defined(__CUDA_ARCH__)
#define PE_MATH_PAIR(name, ffun, dfun)                   \
  PE_HD float name(float a) { return ffun(a); }          \
  PE_HD double name(double a) { return ::dfun(a); }
#else
#define PE_MATH_PAIR(name, ffun, dfun)                   \
  PE_HD float name(float a) { return std::dfun(a); }     \
  PE_HD double name(double a) { return std::dfun(a); }
#endif
PE_MATH_PAIR(pe_floor, floorf, floor)
PE_MATH_PAIR(pe_exp, expf, exp)
PE_MATH_PAIR(pe_expm1, expm1f, expm1)
#undef PE_MATH_PAIR

// ---------------------------------------------------------------------------------------------
// IEEE-rounded arithmetic that no compiler may fuse or approximate: the CUDA intrinsics on the
// device; on the host plain operators, in translation units compiled without contraction
// (pyengine/no_contract.h). Kernels whose decisions must match the float32 reference's rounding
// (ray_march's cell steps, rasterize's edge tests, antialias's crossings, texture's texel
// coordinates, the point ops' voxel indices) use these where nvcc would otherwise contract.
PE_HD float rn_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PE_HD double rn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PE_HD float rn_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
PE_HD float rn_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
PE_HD double rn_div(double a, double b) { return a / b; }  // IEEE on both sides
PE_HD float rn_rcp(float a) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(a);
#else
  return 1.0f / a;
#endif
}
PE_HD double rn_rcp(double a) {
#if defined(__CUDA_ARCH__)
  return __drcp_rn(a);
#else
  return 1.0 / a;
#endif
}

// a * b + c rounded once.
PE_HD float pe_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
PE_HD double pe_fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

}  // namespace pe
