// Device-portable building blocks shared by the CPU (OpenMP) and CUDA kernels.
//
// Everything here is header-only and free of torch headers, so the very same per-element
// maths compiles with g++ for csrc/cpu and with nvcc for csrc/cuda.
#pragma once

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

namespace pe {

// Converting loads: tables may be stored in half / bfloat16 but maths is float or double.
template <typename T>
PE_HD T load_as(float v) { return static_cast<T>(v); }
template <typename T>
PE_HD T load_as(double v) { return static_cast<T>(v); }
#if defined(__CUDACC__)
template <typename T>
PE_HD T load_as(__half v) { return static_cast<T>(__half2float(v)); }
template <typename T>
PE_HD T load_as(__nv_bfloat16 v) { return static_cast<T>(__bfloat162float(v)); }
#endif

template <typename T>
PE_HD void store_to(float* p, T v) { *p = static_cast<float>(v); }
template <typename T>
PE_HD void store_to(double* p, T v) { *p = static_cast<double>(v); }
#if defined(__CUDACC__)
template <typename T>
PE_HD void store_to(__half* p, T v) { *p = __float2half_rn(static_cast<float>(v)); }
template <typename T>
PE_HD void store_to(__nv_bfloat16* p, T v) { *p = __float2bfloat16_rn(static_cast<float>(v)); }
#endif

}  // namespace pe
