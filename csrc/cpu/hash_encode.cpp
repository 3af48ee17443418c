// CPU kernels of hash_encode: OpenMP loops over the per-(point, level) maths in
// pyengine/hash_encode.h, the same functions the CUDA kernels run.
//
// Work split: levels outer, points inner. One level's table (at most 2^log2_hashmap_size rows,
// a few MB) then stays in cache while every point reads it, instead of all levels (tens of MB)
// competing for it. The point loops use schedule(static) with identical bounds inside one
// parallel region, so a point belongs to the same thread at every level and dL/dx accumulates
// without atomics. Table gradients go to a per-thread buffer of one level, summed after the
// level; that replaces an atomic compare-and-swap per (corner, feature) by plain adds.
#include "pyengine/hash_encode.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pe {
namespace cpu {
namespace {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int num_threads() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

struct PlainAdd {  // the buffer is private to the thread
  template <int F, typename G, typename T>
  void vec(G* addr, const T (&v)[F]) {
    for (int f = 0; f < F; ++f) addr[f] += static_cast<G>(v[f]);
  }
};

uint32_t max_level_rows(const HashLevels& lv) {
  uint32_t m = 0;
  for (int l = 0; l < lv.n_levels; ++l) m = std::max(m, lv.offset[l + 1] - lv.offset[l]);
  return m;
}

// Per-thread gradient buffers for one level, and their reduction into the global table.
template <typename T>
struct LevelScratch {
  std::vector<std::vector<T>> bufs;
  LevelScratch(bool enabled, size_t rows, int F) {
    if (enabled) bufs.assign(max_threads(), std::vector<T>(rows * F));
  }
  T* mine(size_t n) {  // zeroed slice for the calling thread
    T* p = bufs[thread_id()].data();
    std::memset(p, 0, n * sizeof(T));
    return p;
  }
  // Called by every thread of the team after a barrier: thread-sliced sum into dst.
  void reduce_into(T* dst, size_t n) {
    const int nt = num_threads();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
      T s = T(0);
      for (int t = 0; t < nt; ++t) s += bufs[t][i];
      dst[i] += s;
    }
  }
};

template <typename T, typename P>
struct Fwd {
  int64_t N;
  const HashLevels& lv;
  int interp;
  const T* x;
  const P* params;
  P* out;
  template <int D, int F>
  void run() {
    const int L = lv.n_levels;
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
      const P* table = params + static_cast<size_t>(lv.offset[l]) * F;
      const uint32_t size = lv.offset[l + 1] - lv.offset[l];
      const bool hashed = (lv.hashed_mask >> l) & 1;
      const T scale = static_cast<T>(lv.scale[l]);
#pragma omp for schedule(static) nowait
      for (int64_t n = 0; n < N; ++n) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, scale, interp, c);
        T o[F];
        hash_level_fwd<T, D, F, P>(c, table, lv.res[l], size, hashed, o);
        for (int f = 0; f < F; ++f) out[(n * L + l) * F + f] = static_cast<P>(o[f]);
      }
    }
  }
};

template <typename T, typename P>
struct Bwd {
  int64_t N;
  const HashLevels& lv;
  int interp;
  const T* x;
  const P *params, *grad_out;
  T *grad_params, *grad_x;  // grad_x is zeroed by the caller
  template <int D, int F>
  void run() {
    const int L = lv.n_levels;
    LevelScratch<T> scratch(grad_params != nullptr, max_level_rows(lv), F);
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
      const size_t off = static_cast<size_t>(lv.offset[l]) * F;
      const uint32_t size = lv.offset[l + 1] - lv.offset[l];
      const bool hashed = (lv.hashed_mask >> l) & 1;
      const T scale = static_cast<T>(lv.scale[l]);
      T* gbuf = grad_params ? scratch.mine(static_cast<size_t>(size) * F) : nullptr;
      PlainAdd add;
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, scale, interp, c);
        T g[F], dx[D] = {};
        for (int f = 0; f < F; ++f) g[f] = static_cast<T>(grad_out[(n * L + l) * F + f]);
        hash_level_bwd<T, D, F, P>(c, params + off, gbuf, lv.res[l], size, hashed, g,
                                   grad_params != nullptr, grad_x != nullptr, dx, add);
        if (grad_x)
          for (int d = 0; d < D; ++d) grad_x[n * D + d] += dx[d];
      }
      // (the implicit barrier above makes every thread's buffer complete)
      if (grad_params) scratch.reduce_into(grad_params + off, static_cast<size_t>(size) * F);
    }
  }
};

template <typename T, typename P>
struct BwdBwd {
  int64_t N;
  const HashLevels& lv;
  int interp;
  const T* x;
  const P *params, *grad_out;
  const T* gg_x;
  P* d_grad_out;
  T *grad_x, *grad_params;  // zeroed by the caller
  template <int D, int F>
  void run() {
    const int L = lv.n_levels;
    LevelScratch<T> scratch(grad_params != nullptr, max_level_rows(lv), F);
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
      const size_t off = static_cast<size_t>(lv.offset[l]) * F;
      const uint32_t size = lv.offset[l + 1] - lv.offset[l];
      const bool hashed = (lv.hashed_mask >> l) & 1;
      const T scale = static_cast<T>(lv.scale[l]);
      T* gbuf = grad_params ? scratch.mine(static_cast<size_t>(size) * F) : nullptr;
      PlainAdd add;
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, scale, interp, c);
        T g[F], dg[F] = {}, gg[D], dx[D] = {};
        for (int f = 0; f < F; ++f) g[f] = static_cast<T>(grad_out[(n * L + l) * F + f]);
        for (int d = 0; d < D; ++d) gg[d] = gg_x[n * D + d];
        hash_level_bwd_bwd<T, D, F, P>(c, params + off, gbuf, lv.res[l], size, hashed, g, gg,
                                       grad_params != nullptr, d_grad_out != nullptr,
                                       grad_x != nullptr, dg, dx, add);
        if (d_grad_out)
          for (int f = 0; f < F; ++f) d_grad_out[(n * L + l) * F + f] = static_cast<P>(dg[f]);
        if (grad_x)
          for (int d = 0; d < D; ++d) grad_x[n * D + d] += dx[d];
      }
      if (grad_params) scratch.reduce_into(grad_params + off, static_cast<size_t>(size) * F);
    }
  }
};

}  // namespace

template <typename T>
void hash_encode_fwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  Fwd<T, T> fn{a.N, lv, a.interp, a.x, a.params, a.out};
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    fn.template run<decltype(d)::value, decltype(f)::value>();
  });
}

template <typename T>
void hash_encode_bwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  Bwd<T, T> fn{a.N, lv, a.interp, a.x, a.params, a.grad_out, a.grad_params, a.grad_x};
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    fn.template run<decltype(d)::value, decltype(f)::value>();
  });
}

template <typename T>
void hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  BwdBwd<T, T> fn{a.N,        lv,   a.interp, a.x,      a.params,
                  a.grad_out, a.gg_x, a.out,  a.grad_x, a.grad_params};
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    fn.template run<decltype(d)::value, decltype(f)::value>();
  });
}

#define PE_INSTANTIATE(T)                                                       \
  template void hash_encode_fwd<T>(const HashLevels&, const HashArgs<T, T>&);   \
  template void hash_encode_bwd<T>(const HashLevels&, const HashArgs<T, T>&);   \
  template void hash_encode_bwd_bwd<T>(const HashLevels&, const HashArgs<T, T>&);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cpu
}  // namespace pe
