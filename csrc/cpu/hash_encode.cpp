// CPU kernels of hash_encode: OpenMP loops over the per-(point, level) maths in
// pyengine/hash_encode.h, the same functions the CUDA kernels run.
//
// Work split: one iteration per point, levels looped inside, so that dL/dx is summed in
// registers; table gradients are scattered with an OpenMP atomic because points of one level
// share table rows.
#include "pyengine/hash_encode.h"

#include <cstdint>

namespace pe {
namespace cpu {
namespace {

struct AtomicAdd {
  template <int F, typename G, typename T>
  void vec(G* addr, const T (&v)[F]) {
    for (int f = 0; f < F; ++f) {
#pragma omp atomic
      addr[f] += static_cast<G>(v[f]);
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
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int l = 0; l < L; ++l) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
        T o[F];
        hash_level_fwd<T, D, F, P>(c, params + static_cast<size_t>(lv.offset[l]) * F, lv.res[l],
                                   lv.offset[l + 1] - lv.offset[l], (lv.hashed_mask >> l) & 1, o);
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
  const T *x;
  const P *params, *grad_out;
  T *grad_params, *grad_x;
  template <int D, int F>
  void run() {
    const int L = lv.n_levels;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      AtomicAdd add;
      T dx[D] = {};
      for (int l = 0; l < L; ++l) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
        T g[F];
        for (int f = 0; f < F; ++f) g[f] = static_cast<T>(grad_out[(n * L + l) * F + f]);
        const size_t off = static_cast<size_t>(lv.offset[l]) * F;
        hash_level_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr,
                                   lv.res[l], lv.offset[l + 1] - lv.offset[l],
                                   (lv.hashed_mask >> l) & 1, g, grad_params != nullptr,
                                   grad_x != nullptr, dx, add);
      }
      if (grad_x)
        for (int d = 0; d < D; ++d) grad_x[n * D + d] = dx[d];
    }
  }
};

template <typename T, typename P>
struct BwdBwd {
  int64_t N;
  const HashLevels& lv;
  int interp;
  const T *x;
  const P *params, *grad_out;
  const T* gg_x;
  P* d_grad_out;
  T *grad_x, *grad_params;
  template <int D, int F>
  void run() {
    const int L = lv.n_levels;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      AtomicAdd add;
      T dx[D] = {};
      T gg[D];
      for (int d = 0; d < D; ++d) gg[d] = gg_x[n * D + d];
      for (int l = 0; l < L; ++l) {
        GridCell<T, D> c;
        grid_cell<T, D>(x + n * D, static_cast<T>(lv.scale[l]), interp, c);
        T g[F], dg[F] = {};
        for (int f = 0; f < F; ++f) g[f] = static_cast<T>(grad_out[(n * L + l) * F + f]);
        const size_t off = static_cast<size_t>(lv.offset[l]) * F;
        hash_level_bwd_bwd<T, D, F, P>(c, params + off, grad_params ? grad_params + off : nullptr,
                                       lv.res[l], lv.offset[l + 1] - lv.offset[l],
                                       (lv.hashed_mask >> l) & 1, g, gg, grad_params != nullptr,
                                       d_grad_out != nullptr, grad_x != nullptr, dg, dx, add);
        if (d_grad_out)
          for (int f = 0; f < F; ++f) d_grad_out[(n * L + l) * F + f] = static_cast<P>(dg[f]);
      }
      if (grad_x)
        for (int d = 0; d < D; ++d) grad_x[n * D + d] = dx[d];
    }
  }
};

}  // namespace

template <typename T, typename P>
void hash_encode_fwd(int64_t N, int D, int F, const HashLevels& lv, int interp, const T* x,
                     const P* params, P* out) {
  Fwd<T, P> fn{N, lv, interp, x, params, out};
  dispatch_hash_dims(D, F, fn);
}

template <typename T, typename P>
void hash_encode_bwd(int64_t N, int D, int F, const HashLevels& lv, int interp, const T* x,
                     const P* params, const P* grad_out, T* grad_params, T* grad_x) {
  Bwd<T, P> fn{N, lv, interp, x, params, grad_out, grad_params, grad_x};
  dispatch_hash_dims(D, F, fn);
}

template <typename T, typename P>
void hash_encode_bwd_bwd(int64_t N, int D, int F, const HashLevels& lv, int interp, const T* x,
                         const P* params, const P* grad_out, const T* gg_x, P* d_grad_out,
                         T* grad_x, T* grad_params) {
  BwdBwd<T, P> fn{N, lv, interp, x, params, grad_out, gg_x, d_grad_out, grad_x, grad_params};
  dispatch_hash_dims(D, F, fn);
}

#define PE_INSTANTIATE(T)                                                                        \
  template void hash_encode_fwd<T, T>(int64_t, int, int, const HashLevels&, int, const T*,       \
                                      const T*, T*);                                             \
  template void hash_encode_bwd<T, T>(int64_t, int, int, const HashLevels&, int, const T*,       \
                                      const T*, const T*, T*, T*);                               \
  template void hash_encode_bwd_bwd<T, T>(int64_t, int, int, const HashLevels&, int, const T*,   \
                                          const T*, const T*, const T*, T*, T*, T*);
PE_INSTANTIATE(float)
PE_INSTANTIATE(double)
#undef PE_INSTANTIATE

}  // namespace cpu
}  // namespace pe
