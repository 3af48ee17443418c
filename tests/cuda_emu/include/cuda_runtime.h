// CUDA runtime emulation for tests: runs a .cu file's kernels on the CPU, one thread after
// another (tests/cuda_emu/build.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)`
// into `pe_emu::launch(grid, block, [&] { kernel(args); })`). Threads never run concurrently, so
// atomics are plain read-modify-writes; races and barriers are out of its reach. What it does
// check: every thread's indexing and maths, the launch configurations (an empty grid is an
// error, as on a GPU), the alignment of vector atomics, and the host-side wrappers.
//
// A translated .cu unit is compiled as nvcc's device pass is: build.py defines __CUDACC__ and
// __CUDA_ARCH__ (900) before this header, so the `#if defined(__CUDA_ARCH__)` branches of the
// kernels and of csrc/include/pyengine run, and the device intrinsics below stand in for the
// hardware's. The host and CPU units of the same build include this header (through the c10
// stand-ins) without __CUDACC__ and get no intrinsics. Unlike nvcc, a .cu unit has a single
// pass: its host-side launchers see __CUDA_ARCH__ too.
//
// Rounding: the emulated build uses -ffp-contract=off and no fast-math, so each _rn intrinsic is
// one IEEE operation rounded to nearest-even, exactly as on the device. Device maths called by
// name (expf, expm1f, floorf, fmaf, ::exp, ::expm1, ::floor, ::fma) resolve to the C library's:
// floor and fma are exact on both; exp / expm1 agree to within CUDA's documented ulp bounds, not
// bit for bit.
#pragma once

#if defined(__FAST_MATH__)
#error "tests/cuda_emu: build without -ffast-math, or the _rn intrinsics stop rounding like the device's"
#endif

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
// nvcc inlines these into every caller; so must the emulator, or the linker could pair a .cu
// unit's call with the CPU units' copy of the same inline function (compiled without
// __CUDA_ARCH__, so with the other branch).
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict

typedef void* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorMisalignedAddress = 716,
};

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
  unsigned x, y, z;
};
// vector_types.h: the alignment is part of the type (vector loads and atomics rely on it).
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace pe_emu {
inline thread_local uint3 thread_idx, block_idx;
inline thread_local dim3 block_dim, grid_dim;
inline thread_local cudaError_t last_error = cudaSuccess;

// A fault inside a kernel (on a GPU: reported by a later call); the first one is kept.
inline void fault(cudaError_t e) {
  if (last_error == cudaSuccess) last_error = e;
}

// How often each emulated intrinsic ran, read through pe_emu_counter() (support.cpp), so that
// tests can tell that an op went through the device branches.
enum Counter {
  kFmulRn, kFaddRn, kFdivRn, kFrcpRn, kDmulRn, kDrcpRn,
  kAtomicAddF32, kAtomicAddF64, kAtomicAddInt, kAtomicAddF2, kAtomicAddF4, kAtomicAddHalf,
  kAtomicAddBf16, kLdg, kNumCounters
};
inline constexpr const char* kCounterNames[kNumCounters] = {
    "__fmul_rn", "__fadd_rn", "__fdiv_rn", "__frcp_rn", "__dmul_rn", "__drcp_rn",
    "atomicAdd(float)", "atomicAdd(double)", "atomicAdd(int)", "atomicAdd(float2)",
    "atomicAdd(float4)", "atomicAdd(__half)", "atomicAdd(__nv_bfloat16)", "__ldg"};
inline std::atomic<uint64_t> counters[kNumCounters];
inline void count(Counter c) { counters[c].fetch_add(1, std::memory_order_relaxed); }

// Every unit that includes this header notes the __CUDA_ARCH__ it was compiled with (0: host).
struct Unit {
  const char* file;
  int arch;
};
constexpr int kMaxUnits = 64;
inline Unit units[kMaxUnits];
inline std::atomic<int> n_units{0};
inline bool note_unit(const char* file, int arch) {
  const int i = n_units.fetch_add(1);
  if (i < kMaxUnits) units[i] = {file, arch};
  return true;
}

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

#if defined(__CUDA_ARCH__)
#define PE_EMU_UNIT_ARCH __CUDA_ARCH__
#else
#define PE_EMU_UNIT_ARCH 0
#endif
namespace {
[[maybe_unused]] const bool pe_emu_unit_noted = ::pe_emu::note_unit(__BASE_FILE__, PE_EMU_UNIT_ARCH);
}  // namespace
#undef PE_EMU_UNIT_ARCH

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
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMisalignedAddress: return "misaligned address";
  }
  return "unknown error";
}

// ---------------------------------------------------------------------------------------------
// Device intrinsics: declared in CUDA units (__CUDACC__) only, and, as in CUDA's headers, in a
// device pass only from the architecture that has them (sm_60: double, sm_90: float2 / float4).
#if defined(__CUDACC__)

namespace pe_emu {
template <typename T, Counter C>
inline T atomic_add(T* address, T value) {
  count(C);
  const T old = *address;
  *address = old + value;
  return old;
}
}  // namespace pe_emu

inline int atomicAdd(int* a, int v) { return pe_emu::atomic_add<int, pe_emu::kAtomicAddInt>(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return pe_emu::atomic_add<unsigned, pe_emu::kAtomicAddInt>(a, v);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return pe_emu::atomic_add<unsigned long long, pe_emu::kAtomicAddInt>(a, v);
}
inline float atomicAdd(float* a, float v) { return pe_emu::atomic_add<float, pe_emu::kAtomicAddF32>(a, v); }
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 600
inline double atomicAdd(double* a, double v) {
  return pe_emu::atomic_add<double, pe_emu::kAtomicAddF64>(a, v);
}
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// One atomic over 8 / 16 bytes: the address must be aligned to the vector's size.
inline float2 atomicAdd(float2* a, float2 v) {
  pe_emu::count(pe_emu::kAtomicAddF2);
  if (reinterpret_cast<uintptr_t>(a) % alignof(float2) != 0) {
    pe_emu::fault(cudaErrorMisalignedAddress);
    return {};
  }
  const float2 old = *a;
  *a = {old.x + v.x, old.y + v.y};
  return old;
}
inline float4 atomicAdd(float4* a, float4 v) {
  pe_emu::count(pe_emu::kAtomicAddF4);
  if (reinterpret_cast<uintptr_t>(a) % alignof(float4) != 0) {
    pe_emu::fault(cudaErrorMisalignedAddress);
    return {};
  }
  const float4 old = *a;
  *a = {old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w};
  return old;
}
#endif

// Integer maximum / minimum (furthest_point_sample's per-step argmax, rasterize's depth test): exact in
// any order.
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
  const unsigned long long old = *a;
  if (v > old) *a = v;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {  // rasterize's depth keys
  const unsigned long long old = *a;
  if (v < old) *a = v;
  return old;
}
inline int atomicMin(int* a, int v) {
  const int old = *a;
  if (v < old) *a = v;
  return old;
}

// Bit casts.
inline unsigned __float_as_uint(float v) {
  unsigned u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline long long __double_as_longlong(double v) {
  long long u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

template <typename T>
inline T __ldg(const T* p) {
  pe_emu::count(pe_emu::kLdg);
  return *p;
}

// Round-to-nearest-even arithmetic: one IEEE operation each, never fused (-ffp-contract=off).
inline float __fmul_rn(float a, float b) {
  pe_emu::count(pe_emu::kFmulRn);
  return a * b;
}
inline float __fadd_rn(float a, float b) {
  pe_emu::count(pe_emu::kFaddRn);
  return a + b;
}
inline float __fdiv_rn(float a, float b) {
  pe_emu::count(pe_emu::kFdivRn);
  return a / b;
}
inline float __frcp_rn(float a) {
  pe_emu::count(pe_emu::kFrcpRn);
  return 1.0f / a;
}
inline double __dmul_rn(double a, double b) {
  pe_emu::count(pe_emu::kDmulRn);
  return a * b;
}
inline double __drcp_rn(double a) {
  pe_emu::count(pe_emu::kDrcpRn);
  return 1.0 / a;
}

#endif  // __CUDACC__
