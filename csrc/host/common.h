// Shared by the host files: input checks, typed pointers, dtype dispatch, the CPU / CUDA choice.
//
// Adding an op's C++ side (composite is the smallest example):
//   1. csrc/include/pyengine/<op>.h: the per-element maths as PE_HD functions, free of torch, and
//      the launcher declarations: cpu::<op>_fwd<T>(..., typed pointers) and, inside
//      #ifdef PE_CUDA_LAUNCHERS, cuda::<op>_fwd<T>(..., cudaStream_t) returning 0 or a cudaError_t.
//   2. csrc/cpu/<op>.cpp: the OpenMP loop over that maths, explicitly instantiated for each T.
//   3. csrc/cuda/<op>.cu: the __global__ kernel over the same maths and the typed launcher,
//      explicitly instantiated for each T (no torch headers in .cu files).
//   4. csrc/host/<op>.{h,cpp}: one function per entry point. It checks what the kernels rely on
//      for memory safety (the Python layer gives the user-facing errors), allocates the outputs
//      and runs both launchers through one call:
//        dispatch_float(t.scalar_type(), "op", [&](auto z) {
//          using T = decltype(z);
//          run_on_device(t, "op", PE_CUDA(cuda::op_fwd<T>(n, ptr<const T>(x), ptr<T>(y), stream)),
//                        [&] { cpu::op_fwd<T>(n, ptr<const T>(x), ptr<T>(y)); });
//        });
//   5. csrc/ext.cpp: one m.def per host function.
#pragma once

#include <ATen/ATen.h>

#include <string>

#ifdef PE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "pyengine/common.h"

namespace pe {
namespace host {

using at::Tensor;

// True when the CUDA launchers should run for this tensor. Under PE_EMULATE_CUDA (tests only:
// tests/cuda_emu builds the CUDA sources for the CPU, one thread at a time) every tensor takes
// the CUDA path, so the .cu kernels run on CPU memory.
inline bool on_device(const Tensor& t) {
#ifdef PE_EMULATE_CUDA
  (void)t;
  return true;
#else
  return t.is_cuda();
#endif
}

// PE_CUDA(expr): the CUDA launch for run_on_device, with `stream` in scope; without CUDA it
// compiles to nothing, so the launcher need not be declared.
#ifdef PE_WITH_CUDA
#define PE_CUDA(...) [&](cudaStream_t stream) -> int { return __VA_ARGS__; }
#else
#define PE_CUDA(...) nullptr
#endif

// Runs cuda(stream) under t's device guard and current stream when t is on the GPU (a nonzero
// return is the cudaError_t of a failed launch), else cpu().
template <typename Cuda, typename Cpu>
void run_on_device(const Tensor& t, const char* op, Cuda&& cuda, Cpu&& cpu) {
  if (!on_device(t)) return cpu();
#ifdef PE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(t.device());
  const int err = cuda(c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, op, ": CUDA launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
#else
  (void)cuda;
  TORCH_CHECK(false, op, ": pyengine._C was built without CUDA");
#endif
}

// fn(T()) with T = float or double for a float32 / float64 dtype.
template <typename Fn>
void dispatch_float(at::ScalarType s, const char* op, Fn&& fn) {
  if (s == at::kDouble) return fn(double());
  TORCH_CHECK_TYPE(s == at::kFloat, op, ": expected float32 or float64, got ", s);
  fn(float());
}

// fn(T(), P()) for a table stored in dtype s: P is the storage type and T the compute type,
// T = P = float / double, or T = float with P = F16Storage / BF16Storage for float16 / bfloat16.
template <typename Fn>
void dispatch_storage(at::ScalarType s, const char* op, Fn&& fn) {
  if (s == at::kHalf) return fn(float(), F16Storage());
  if (s == at::kBFloat16) return fn(float(), BF16Storage());
  dispatch_float(s, op, [&](auto t) { fn(t, t); });
}

// The typed data pointer of t; null when t is undefined or empty.
template <typename T>
T* ptr(const Tensor& t) {
  if (!t.defined() || t.numel() == 0) return nullptr;
  TORCH_INTERNAL_ASSERT(t.element_size() == sizeof(T) && t.is_contiguous());
  return static_cast<T*>(t.data_ptr());
}

// "[a, b, c]" by std::to_string. Error messages format numbers through this rather than
// through an ostream: on an H200 machine (torch 2.11+cu130, g++ 13) inserting an integer into
// c10::str's ostream from this module crashed inside the stream's locale (2026-11-27, commit
// e848364, found with cuda-gdb), so the messages here do without it.
inline std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Checks the inputs of one call against what its kernels read: dtype, sizes (-1: any) and the
// device of the first tensor; returns each contiguous.
struct Inputs {
  const char* op;
  at::Device device;
  Tensor operator()(const Tensor& t, const char* name, at::ScalarType dtype,
                    c10::IntArrayRef sizes) const {
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ",
                     c10::getDtypeNames(dtype).first, ", got ",
                     c10::getDtypeNames(t.scalar_type()).first);
    bool ok = t.dim() == static_cast<int64_t>(sizes.size());
    for (size_t i = 0; ok && i < sizes.size(); ++i) ok = sizes[i] < 0 || t.size(i) == sizes[i];
    TORCH_CHECK_VALUE(ok, op, ": ", name, " must be ", shape_str(sizes), " (-1: any), got ",
                      shape_str(t.sizes()));
    TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device().str(),
                      ", not ", device.str());
    return t.contiguous();
  }
};

}  // namespace host
}  // namespace pe
