// The only binding file: one m.def per host function. Host code (tensor checks, output
// allocation, CPU / CUDA dispatch) lives in csrc/host/<op>.cpp; kernels in csrc/cpu and csrc/cuda.
#include <torch/extension.h>

#include "host/hash_encode.h"

namespace {
bool built_with_cuda() {
#ifdef PE_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyengine compiled kernels (CPU/OpenMP, and CUDA when built with it)";
  m.def("built_with_cuda", &built_with_cuda);

  // hash_encode
  m.def("hash_encode_fwd", &pe::host::hash_encode_fwd, "hash_encode forward -> [N, L*F]");
  m.def("hash_encode_bwd", &pe::host::hash_encode_bwd,
        "hash_encode backward -> (grad_params | None, grad_positions | None)");
  m.def("hash_encode_bwd_bwd", &pe::host::hash_encode_bwd_bwd,
        "hash_encode double backward -> (d_grad_out | None, d_positions | None, d_params | None)");

  // (new ops: add their m.def lines below, one block per op)
}
