// CUDA kernels of furthest_point_sample over the maths of pyengine/furthest_point_sample.h.
//
// One launch per sample (the steps depend on each other): threads over (b, t), t one of P lanes
// of batch b, grid-stride over B * P, so many blocks share a batch and any B fits. Lane t owns
// points t, t + P, ... (coalesced along n): it reads the previous sample's index from the step
// before, lowers the points' distances to it, keeps its own best (distance, lowest index) and
// merges it into the batch's maximum with one integer atomic. The atomics compute a maximum
// (exact, commutative), so the samples are the same in every run: no float atomics here.
#include <cuda_runtime.h>

#include "pyengine/cuda_grid.h"

#include <cstdint>
#include <type_traits>

#include "pyengine/furthest_point_sample.h"

namespace pe {
namespace cuda {
namespace {

constexpr int64_t kPointsPerLane = 4;



// float32, step i: the previous sample is decoded from keys[b, i - 1] (keys[b, 0] encodes point
// 0); the lane's best goes into keys[b, i] as (distance bits << 32 | ~index).
__global__ void fps_step_float_kernel(int64_t B, int64_t N, int64_t M, int64_t P, int64_t i, const float* coords,
                                      float* dist, unsigned long long* keys) {
  PE_GRID_LOOP(j, B * P) {
    const int64_t b = j / P, t = j % P;
    const float* c = coords + b * 3 * N;
    float* d = dist + b * N;
    const int64_t last = fps_key_index(keys[b * M + i - 1]);
    unsigned long long best = 0;
    for (int64_t n = t; n < N; n += P) {
      const float dn = pt_dist2(c, N, n, c, N, last);
      const float m = dn < d[n] ? dn : d[n];
      d[n] = m;
      const unsigned long long k = fps_key(m, n);
      best = k > best ? k : best;
    }
    if (best) atomicMax(keys + b * M + i, best);
  }
}

__global__ void fps_decode_kernel(int64_t B, int64_t M, const unsigned long long* keys, int32_t* idx) {
  PE_GRID_LOOP(j, B * M) { idx[j] = j % M == 0 ? 0 : fps_key_index(keys[j]); }
}

// float64, step i, first pass: lower the distances to sample idx[b, i - 1] and atomicMax the bits
// of the largest into maxbits[b, i] (the caller's zeroed keys).
__global__ void fps_step_double_kernel(int64_t B, int64_t N, int64_t M, int64_t P, int64_t i, const double* coords,
                                       double* dist, const int32_t* idx, unsigned long long* maxbits) {
  PE_GRID_LOOP(j, B * P) {
    const int64_t b = j / P, t = j % P;
    const double* c = coords + b * 3 * N;
    double* d = dist + b * N;
    const int64_t last = idx[b * M + i - 1];
    unsigned long long best = 0;
    for (int64_t n = t; n < N; n += P) {
      const double dn = pt_dist2(c, N, n, c, N, last);
      const double m = dn < d[n] ? dn : d[n];
      d[n] = m;
      const unsigned long long k = pt_bits(m);
      best = k > best ? k : best;
    }
    atomicMax(maxbits + b * M + i, best);
  }
}

// float64, step i, second pass: the lowest index at the largest distance.
__global__ void fps_argmax_double_kernel(int64_t B, int64_t N, int64_t M, int64_t P, int64_t i, const double* dist,
                                         const unsigned long long* maxbits, int32_t* idx) {
  PE_GRID_LOOP(j, B * P) {
    const int64_t b = j / P, t = j % P;
    const double* d = dist + b * N;
    const unsigned long long want = maxbits[b * M + i];
    for (int64_t n = t; n < N; n += P) {
      if (pt_bits(d[n]) == want) {
        atomicMin(idx + b * M + i, static_cast<int32_t>(n));
        break;  // the lane's later points have higher indices
      }
    }
  }
}

// Sample 0 is point 0: idx[b, 0] and, for float32's decoding, keys[b, 0].
__global__ void fps_first_kernel(int64_t B, int64_t M, int32_t* idx, unsigned long long* keys) {
  PE_GRID_LOOP(b, B) {
    idx[b * M] = 0;
    keys[b * M] = fps_key(0.0f, 0);
  }
}

#undef PE_GRID_LOOP

int status() { return static_cast<int>(cudaGetLastError()); }

int64_t lanes(int64_t N) {
  const int64_t p = (N + kPointsPerLane - 1) / kPointsPerLane;
  return p < 1 ? 1 : p;
}

}  // namespace

template <typename T>
int furthest_point_sample(int64_t B, int64_t N, int64_t M, const T* coords, T* dist, unsigned long long* keys,
                          int32_t* idx, cudaStream_t stream) {
  if (B * M == 0) return 0;
  const int64_t P = lanes(N);
  fps_first_kernel<<<blocks(B), kThreads, 0, stream>>>(B, M, idx, keys);
  if (const int err = status()) return err;
  if constexpr (std::is_same<T, float>::value) {
    for (int64_t i = 1; i < M; ++i) {
      fps_step_float_kernel<<<blocks(B * P), kThreads, 0, stream>>>(B, N, M, P, i, coords, dist, keys);
      if (const int err = status()) return err;
    }
    fps_decode_kernel<<<blocks(B * M), kThreads, 0, stream>>>(B, M, keys, idx);
    return status();
  } else {
    for (int64_t i = 1; i < M; ++i) {
      fps_step_double_kernel<<<blocks(B * P), kThreads, 0, stream>>>(B, N, M, P, i, coords, dist, idx, keys);
      if (const int err = status()) return err;
      fps_argmax_double_kernel<<<blocks(B * P), kThreads, 0, stream>>>(B, N, M, P, i, dist, keys, idx);
      if (const int err = status()) return err;
    }
    return 0;
  }
}

template int furthest_point_sample<float>(int64_t, int64_t, int64_t, const float*, float*, unsigned long long*,
                                          int32_t*, cudaStream_t);
template int furthest_point_sample<double>(int64_t, int64_t, int64_t, const double*, double*, unsigned long long*,
                                           int32_t*, cudaStream_t);

}  // namespace cuda
}  // namespace pe
