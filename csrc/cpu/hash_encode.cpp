// CPU kernels of hash_encode: OpenMP loops over the per-(point, level) maths in
// pyengine/hash_encode.h, the same functions the CUDA kernels run.
//
// Work split. Forward and dL/dx: levels outer, points inner. One level's table (at most
// 2^log2_hashmap_size rows, a few MB) then stays in cache while every point reads it, instead of
// all levels (tens of MB) competing for it. The point loops use schedule(static) with identical
// bounds inside one parallel region, so a point belongs to the same thread at every level and
// dL/dx accumulates without atomics.
//
// Table gradients (and the double backward's d_grad_out, which is per (point, level)) are
// scattered by tasks that each own one level, or one slice of a level's points: a level's rows
// belong to that level alone, so with at most one task per level (threads <= levels) the adds
// are plain and the result is deterministic; with more threads than levels each level is split
// into k point slices whose tasks add atomically (contention is k-way, not threads-way). No
// scratch memory: the extra memory is the gradient itself, whatever the thread count. (A
// per-thread copy of a level's gradient, summed after the level, costs threads x 4 MiB for a 2^19
// table and reads all of it back on every level of every call, whatever the batch size.)
#include "pyengine/hash_encode.h"

#include <algorithm>
#include <cstdint>

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

// Table-gradient adds of a task that owns its level.
struct PlainAdd {
  template <int F, typename G, typename T>
  void vec(G* addr, const T (&v)[F]) {
    for (int f = 0; f < F; ++f) addr[f] += static_cast<G>(v[f]);
  }
};
// ... and of a task that shares its level with others.
struct AtomicAdd {
  template <int F, typename G, typename T>
  void vec(G* addr, const T (&v)[F]) {
    for (int f = 0; f < F; ++f) {
      const G add = static_cast<G>(v[f]);
#pragma omp atomic
      addr[f] += add;
    }
  }
};

// Per-level constants.
struct Level {
  size_t off;  // first value of the level in params / grad_params (entry offset * F)
  uint32_t res, size;
  bool hashed;
  Level(const HashLevels& lv, int l, int F)
      : off(static_cast<size_t>(lv.offset[l]) * F),
        res(lv.res[l]),
        size(lv.offset[l + 1] - lv.offset[l]),
        hashed((lv.hashed_mask >> l) & 1) {}
};

// Runs body(l, n_begin, n_end, shared) over (level, point slice) tasks for the table-gradient
// scatter; shared is true when other tasks of the same level may run at the same time. Finer
// levels first: they cost the most (cache misses), so they should not be the ones left at the end.
template <typename Body>
void level_tasks(int64_t N, int L, Body&& body) {
  const int k = std::max(1, (max_threads() + L - 1) / L);  // slices per level
  const int64_t tasks = static_cast<int64_t>(L) * k;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int l = L - 1 - static_cast<int>(task % L), s = static_cast<int>(task / L);
    body(l, N * s / k, N * (s + 1) / k, k > 1);
  }
}

}  // namespace

template <typename T>
void hash_encode_fwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    const int64_t N = a.N;
    const int L = lv.n_levels;
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
      const Level v(lv, l, F);
      const T scale = static_cast<T>(lv.scale[l]);
#pragma omp for schedule(static) nowait
      for (int64_t n = 0; n < N; ++n) {
        GridCell<T, D> c;
        grid_cell<T, D>(a.x + n * D, scale, a.interp, c);
        T o[F];
        hash_level_fwd<T, D, F, T>(c, a.params + v.off, v.res, v.size, v.hashed, o);
        for (int f = 0; f < F; ++f) a.out[(n * L + l) * F + f] = o[f];
      }
    }
  });
}

template <typename T>
void hash_encode_bwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    const int64_t N = a.N;
    const int L = lv.n_levels;
    // dL/dtable: level tasks.
    if (a.grad_params)
      level_tasks(N, L, [&](int l, int64_t n0, int64_t n1, bool shared) {
        const Level v(lv, l, F);
        const T scale = static_cast<T>(lv.scale[l]);
        const auto run = [&](auto add) {
          for (int64_t n = n0; n < n1; ++n) {
            GridCell<T, D> c;
            grid_cell<T, D>(a.x + n * D, scale, a.interp, c);
            T g[F], dx[D] = {};
            for (int f = 0; f < F; ++f) g[f] = a.grad_out[(n * L + l) * F + f];
            hash_level_bwd<T, D, F, T>(c, a.params + v.off, a.grad_params + v.off, v.res, v.size,
                                       v.hashed, g, true, false, dx, add);
          }
        };
        shared ? run(AtomicAdd()) : run(PlainAdd());
      });
    // dL/dx: levels outer, each point owned by one thread (see the top of this file).
    if (a.grad_x) {
#pragma omp parallel
      for (int l = 0; l < L; ++l) {
        const Level v(lv, l, F);
        const T scale = static_cast<T>(lv.scale[l]);
        PlainAdd unused;
#pragma omp for schedule(static) nowait
        for (int64_t n = 0; n < N; ++n) {
          GridCell<T, D> c;
          grid_cell<T, D>(a.x + n * D, scale, a.interp, c);
          T g[F], dx[D] = {};
          for (int f = 0; f < F; ++f) g[f] = a.grad_out[(n * L + l) * F + f];
          hash_level_bwd<T, D, F, T>(c, a.params + v.off, static_cast<T*>(nullptr), v.res, v.size,
                                     v.hashed, g, false, true, dx, unused);
          for (int e = 0; e < D; ++e) a.grad_x[n * D + e] += dx[e];
        }
      }
    }
  });
}

template <typename T>
void hash_encode_bwd_bwd(const HashLevels& lv, const HashArgs<T, T>& a) {
  dispatch_hash_dims(a.D, a.F, [&](auto d, auto f) {
    constexpr int D = decltype(d)::value, F = decltype(f)::value;
    const int64_t N = a.N;
    const int L = lv.n_levels;
    // One pass over (point, level) pairs: writes = scatter into the table when grad_params,
    // d_grad_out[n, l] (owned by the pair), dL/dx when grad_x. The table scatter needs level
    // tasks, dL/dx the point-owning loop, so when both are needed they run as two passes.
    const auto pair = [&](int64_t n, int l, const Level& v, T scale, bool dparams, bool dx_too,
                          T (&dx)[D], auto& add) {
      GridCell<T, D> c;
      grid_cell<T, D>(a.x + n * D, scale, a.interp, c);
      T g[F], dg[F] = {}, gg[D];
      for (int f = 0; f < F; ++f) g[f] = a.grad_out[(n * L + l) * F + f];
      for (int e = 0; e < D; ++e) gg[e] = a.gg_x[n * D + e];
      const bool dgo = a.out != nullptr && dparams == (a.grad_params != nullptr);
      hash_level_bwd_bwd<T, D, F, T>(c, a.params + v.off, dparams ? a.grad_params + v.off : nullptr,
                                     v.res, v.size, v.hashed, g, gg, dparams, dgo, dx_too, dg, dx,
                                     add);
      if (dgo)
        for (int f = 0; f < F; ++f) a.out[(n * L + l) * F + f] = dg[f];
    };
    if (a.grad_params)
      level_tasks(N, L, [&](int l, int64_t n0, int64_t n1, bool shared) {
        const Level v(lv, l, F);
        const T scale = static_cast<T>(lv.scale[l]);
        const auto run = [&](auto add) {
          T dx[D] = {};
          for (int64_t n = n0; n < n1; ++n) pair(n, l, v, scale, true, false, dx, add);
        };
        shared ? run(AtomicAdd()) : run(PlainAdd());
      });
    if (a.grad_x || (a.out && !a.grad_params)) {
#pragma omp parallel
      for (int l = 0; l < L; ++l) {
        const Level v(lv, l, F);
        const T scale = static_cast<T>(lv.scale[l]);
        PlainAdd unused;
#pragma omp for schedule(static) nowait
        for (int64_t n = 0; n < N; ++n) {
          T dx[D] = {};
          pair(n, l, v, scale, false, a.grad_x != nullptr, dx, unused);
          if (a.grad_x)
            for (int e = 0; e < D; ++e) a.grad_x[n * D + e] += dx[e];
        }
      }
    }
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
