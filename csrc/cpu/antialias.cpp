// CPU kernels of antialias: OpenMP loops over the per-pixel maths in pyengine/antialias.h, the same
// functions the CUDA kernels run.
//
// Floating-point contraction is switched off for this translation unit (before any include, so
// every function in it, inlined or not, is compiled alike): the decisions must be made on values
// rounded as the float32 PyTorch reference rounds them (see the header comment of
// pyengine/antialias.h).
//
// Work split: image rows. The forward and the colour gradient are gathers (each pixel writes only
// its own outputs). The position gradient is a scatter into shared vertices: each row collects the
// contributions of the pairs it owns (the pairs of its pixels with their right and lower
// neighbours) in parallel, then one thread adds them row after row, so grad_pos is the same bits
// whatever the thread count. Blended pairs lie along silhouettes, a small fraction of the pixels.
#include "pyengine/no_contract.h"  // first: see there

#include "pyengine/antialias.h"

#include <cstdint>
#include <vector>

namespace pe {
namespace cpu {
namespace {

template <typename T>
struct PosGrad {
  int64_t row_s, row_e;
  T g_s[3], g_e[3];
};

}  // namespace

template <typename T>
void antialias_fwd(const AntialiasPtrs<T>& p, T* out) {
  const int64_t rows = p.B * p.H;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < p.W; ++x) aa_pixel_fwd(p, r / p.H, r % p.H, x, out);
}

template <typename T>
void antialias_bwd(const AntialiasPtrs<T>& p, const T* grad_out, T* grad_color, T* grad_pos) {
  const int64_t rows = p.B * p.H;
  std::vector<std::vector<PosGrad<T>>> found(grad_pos ? rows : 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / p.H, y = r % p.H;
    for (int64_t x = 0; x < p.W; ++x) {
      if (grad_color) aa_pixel_grad_color(p, grad_out, b, y, x, grad_color);
      if (!grad_pos) continue;
      for (int k = 0; k < 2; ++k) {  // the pairs this pixel is p0 of
        AAPair<T> pair;
        PosGrad<T> g;
        if (aa_pixel_pair(p, b, y, x, k, pair) && aa_pair_grad_pos(p, grad_out, pair, g.g_s, g.g_e)) {
          g.row_s = pair.row_s;
          g.row_e = pair.row_e;
          found[r].push_back(g);
        }
      }
    }
  }
  for (const auto& row : found)
    for (const PosGrad<T>& g : row)
      for (int i = 0; i < 3; ++i) {
        const int c = i == 2 ? 3 : i;  // x, y, w
        grad_pos[4 * g.row_s + c] += g.g_s[i];
        grad_pos[4 * g.row_e + c] += g.g_e[i];
      }
}

template void antialias_fwd<float>(const AntialiasPtrs<float>&, float*);
template void antialias_fwd<double>(const AntialiasPtrs<double>&, double*);
template void antialias_bwd<float>(const AntialiasPtrs<float>&, const float*, float*, float*);
template void antialias_bwd<double>(const AntialiasPtrs<double>&, const double*, double*, double*);

}  // namespace cpu
}  // namespace pe
