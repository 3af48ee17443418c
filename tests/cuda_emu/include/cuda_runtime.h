// CUDA runtime emulation for tests: runs a .cu file's kernels on the CPU, one thread after
// another (tests/cuda_emu/build.py rewrites each `kernel<<<grid, block, smem, stream>>>(args)`
// into `pe_emu::launch(grid, block, [&] { kernel(args); })`). Threads never run concurrently, so
// atomics are plain read-modify-writes; races are out of its reach. What it does check: every
// thread's indexing and maths, the launch configurations (an empty grid is an error, as on a
// GPU), the alignment of vector loads and atomics, and the host-side wrappers.
//
// Block barriers: in a .cu file that uses __syncthreads, shared memory or warp shuffles, launches
// become `pe_emu::launch_coop(grid, block, smem, ...)`, which runs each thread of a block as a
// coroutine (ucontext) on its own stack, still one at a time and in a fixed order: every thread
// runs up to its next __syncthreads (or warp-level wait), then the next thread, and so on, so a
// barrier's writes are seen by all threads after it. Warp shuffles (__shfl_sync, _up, _down,
// _xor, with a width) and __syncwarp wait for the lanes named in their mask, within the warp
// (32 consecutive threads of the block), and a shuffle faults when its source lane is not in the
// mask. A thread that returns while others wait for it at a barrier, a wait no thread can
// release, and a barrier or shuffle in a plain launch are faults (cudaErrorLaunchFailure). Dynamic shared memory
// (`extern __shared__ T name[];`, rewritten by build.py) is a per-launch buffer filled with 0xff
// bytes (NaN, -1) before each block, so reading a slot no thread wrote shows; more than the 48 KiB a
// launch may ask for without an opt-in fails the launch (cudaErrorInvalidValue).
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

#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
// nvcc inlines these into every caller; so must the emulator, or the linker could pair a .cu
// unit's call with the CPU units' copy of the same inline function (compiled without
// __CUDA_ARCH__, so with the other branch).
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// A static __shared__ array is one object for all threads of the block (blocks run one at a time).
#define __shared__ static

typedef void* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
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
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
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
  kAtomicAddBf16, kLdg, kSyncthreads, kVecLoad, kShfl, kNumCounters
};
inline constexpr const char* kCounterNames[kNumCounters] = {
    "__fmul_rn", "__fadd_rn", "__fdiv_rn", "__frcp_rn", "__dmul_rn", "__drcp_rn",
    "atomicAdd(float)", "atomicAdd(double)", "atomicAdd(int)", "atomicAdd(float2)",
    "atomicAdd(float4)", "atomicAdd(__half)", "atomicAdd(__nv_bfloat16)", "__ldg",
    "__syncthreads", "vector load", "__shfl_sync"};
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

inline bool bad_config(dim3 grid, dim3 block) {
  return grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 ||
         block.x * block.y * block.z > 1024 || grid.y > 65535 || grid.z > 65535;
}

template <typename F>
void launch(dim3 grid, dim3 block, F&& body) {
  if (bad_config(grid, block)) {
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


// launch_coop: the threads of a block as coroutines (see the top of this file).
constexpr size_t kMaxDynamicSmem = 48 * 1024;
constexpr size_t kCoopStack = 256 * 1024;
constexpr size_t kGuardPage = 4096;
enum CoopState : unsigned char { kReady = 0, kAtBarrier = 1, kExited = 2, kAtWarpWait = 3 };
struct CoopBlock {
  ucontext_t main;
  ucontext_t* ctx;
  unsigned char* state;
  unsigned* wait_mask;  // the lanes a thread in kAtWarpWait waits for
  uint64_t* xchg;       // one shuffle slot per thread
  unsigned n;           // threads in the block
  unsigned current;
  void (*fn)(void*);
  void* arg;
};
inline thread_local CoopBlock* coop = nullptr;
inline thread_local unsigned char* dyn_smem = nullptr;

inline unsigned char* dynamic_smem() { return dyn_smem; }

inline void coop_entry() {
  CoopBlock* b = coop;
  b->fn(b->arg);
  b->state[b->current] = kExited;  // then back to b->main through uc_link
}

inline void syncthreads() {
  count(kSyncthreads);
  CoopBlock* b = coop;
  if (b == nullptr) {  // a barrier in a kernel that build.py launched without coroutines
    fault(cudaErrorLaunchFailure);
    return;
  }
  b->state[b->current] = kAtBarrier;
  swapcontext(&b->ctx[b->current], &b->main);
}

// Waits until every lane of the caller's warp named in mask waits with the same mask.
inline void warp_wait(unsigned mask) {
  CoopBlock* b = coop;
  if (b == nullptr) {
    fault(cudaErrorLaunchFailure);
    return;
  }
  b->state[b->current] = kAtWarpWait;
  b->wait_mask[b->current] = mask;
  swapcontext(&b->ctx[b->current], &b->main);
}

// A shuffle: the caller's value goes to its slot, then, once the lanes in mask have written
// theirs, it reads lane src's (computed from its own lane by pick, within its width segment).
template <typename T, typename Pick>
T shuffle(unsigned mask, T v, int width, Pick&& pick) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of more than 8 bytes");
  count(kShfl);
  CoopBlock* b = coop;
  if (b == nullptr || width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fault(cudaErrorLaunchFailure);
    return v;
  }
  const unsigned t = b->current, lane = t % 32, base = t - lane;
  const int seg = static_cast<int>(lane) & ~(width - 1);
  const int src = pick(static_cast<int>(lane), seg);
  std::memcpy(&b->xchg[t], &v, sizeof(T));
  warp_wait(mask);
  T out = v;
  if (!((mask >> src) & 1u) || base + src >= b->n) {
    fault(cudaErrorLaunchFailure);  // the source lane is not taking part
  } else {
    std::memcpy(&out, &b->xchg[base + src], sizeof(T));
  }
  warp_wait(mask);  // every lane has read before any writes its slot again
  return out;
}

template <typename F>
void launch_coop(dim3 grid, dim3 block, size_t smem, F&& body) {
  if (bad_config(grid, block)) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem > kMaxDynamicSmem) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  grid_dim = grid;
  block_dim = block;
  const unsigned n = block.x * block.y * block.z;
  const size_t slot = kCoopStack + kGuardPage;
  auto* stacks = static_cast<unsigned char*>(
      mmap(nullptr, slot * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (stacks == MAP_FAILED) std::abort();
  for (unsigned t = 0; t < n; ++t) mprotect(stacks + t * slot, kGuardPage, PROT_NONE);  // overflow traps
  std::vector<ucontext_t> ctx(n);
  std::vector<unsigned char> state(n);
  std::vector<unsigned> wait_mask(n);
  std::vector<uint64_t> xchg(n);
  std::vector<unsigned char> shared((smem + 15) / 16 * 16 + 16);
  unsigned char* smem_base = shared.data() + (16 - reinterpret_cast<uintptr_t>(shared.data()) % 16) % 16;
  using Body = std::remove_reference_t<F>;
  CoopBlock b{};
  b.ctx = ctx.data();
  b.state = state.data();
  b.wait_mask = wait_mask.data();
  b.xchg = xchg.data();
  b.n = n;
  b.fn = [](void* p) { (*static_cast<Body*>(p))(); };
  b.arg = const_cast<void*>(static_cast<const void*>(&body));
  CoopBlock* const outer = coop;
  coop = &b;
  dyn_smem = smem_base;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(smem_base, 0xff, smem);
        for (unsigned t = 0; t < n; ++t) {
          getcontext(&ctx[t]);
          ctx[t].uc_stack.ss_sp = stacks + t * slot + kGuardPage;
          ctx[t].uc_stack.ss_size = kCoopStack;
          ctx[t].uc_link = &b.main;
          makecontext(&ctx[t], coop_entry, 0);
          state[t] = kReady;
        }
        for (;;) {  // one pass per barrier phase
          for (unsigned t = 0; t < n; ++t) {
            if (state[t] != kReady) continue;
            block_idx = {bx, by, bz};
            thread_idx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            b.current = t;
            swapcontext(&b.main, &ctx[t]);
          }
          // release the warp-level waits whose lanes have all arrived
          bool released = false;
          unsigned warp_waiting = 0;
          for (unsigned t = 0; t < n; ++t) {
            if (state[t] != kAtWarpWait) continue;
            ++warp_waiting;
            const unsigned base = t - t % 32, mask = wait_mask[t];
            bool all = true, gone = false;
            for (unsigned j = 0; j < 32 && base + j < n; ++j) {
              if (!((mask >> j) & 1u)) continue;
              const unsigned u = base + j;
              gone = gone || state[u] == kExited;
              all = all && ((state[u] == kAtWarpWait && wait_mask[u] == mask) || state[u] == kExited);
            }
            if (!all) continue;
            if (gone) fault(cudaErrorLaunchFailure);  // a lane of the mask has returned
            for (unsigned j = 0; j < 32 && base + j < n; ++j)
              if (((mask >> j) & 1u) && state[base + j] == kAtWarpWait) state[base + j] = kReady;
            released = true;
          }
          if (released) continue;
          unsigned waiting = 0, exited = 0;
          for (unsigned t = 0; t < n; ++t) {
            waiting += state[t] == kAtBarrier;
            exited += state[t] == kExited;
          }
          if (warp_waiting > 0) {  // lanes wait for lanes that wait elsewhere: a hang on a GPU
            fault(cudaErrorLaunchFailure);
            for (unsigned t = 0; t < n; ++t)
              if (state[t] == kAtWarpWait) state[t] = kReady;
            continue;
          }
          if (waiting == 0) break;
          if (exited > 0) fault(cudaErrorLaunchFailure);  // a barrier not every thread reaches
          for (unsigned t = 0; t < n; ++t)
            if (state[t] == kAtBarrier) state[t] = kReady;
        }
      }
  coop = outer;
  dyn_smem = nullptr;
  munmap(stacks, slot * n);
}

// A vector load's address must be aligned to the vector's size, as on the device.
inline void check_vector_load(const void* p, size_t align) {
  count(kVecLoad);
  if (reinterpret_cast<uintptr_t>(p) % align != 0) fault(cudaErrorMisalignedAddress);
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
    case cudaErrorLaunchFailure: return "unspecified launch failure";
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

inline void __syncthreads() { pe_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { pe_emu::warp_wait(mask); }
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return pe_emu::shuffle(mask, v, width, [&](int, int seg) { return seg + (src & (width - 1)); });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return pe_emu::shuffle(mask, v, width, [&](int lane, int seg) {
    return lane - static_cast<int>(delta) >= seg ? lane - static_cast<int>(delta) : lane;
  });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return pe_emu::shuffle(mask, v, width, [&](int lane, int seg) {
    return lane + static_cast<int>(delta) < seg + width ? lane + static_cast<int>(delta) : lane;
  });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return pe_emu::shuffle(mask, v, width, [&](int lane, int seg) {
    const int src = lane ^ lane_mask;
    return src >= seg && src < seg + width ? src : lane;
  });
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
