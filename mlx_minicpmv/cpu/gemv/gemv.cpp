// y = x @ W.T for one row of x, as a BLAS GEMV (see __init__.py for why).
//
// MLX's CPU Matmul always calls cblas_sgemm; for a single row OpenBLAS's GEMM packs the
// whole weight matrix before using it, so decoding one token reads each weight about three
// times. cblas_sgemv streams the weights once. The symbol comes from the BLAS loaded
// globally before mlx.core (mlx_minicpmv/blas.py).

#include <nanobind/nanobind.h>

#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace mx = mlx::core;
namespace nb = nanobind;

// The two CBLAS declarations used, so that no BLAS development headers are needed.
extern "C" {
enum CBLAS_ORDER { CblasRowMajor = 101 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, int m, int n, float alpha, const float* a,
                 int lda, const float* x, int incx, float beta, float* y, int incy);
}

class Gemv : public mx::UnaryPrimitive {
 public:
  explicit Gemv(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& x = inputs[0];  // (rows, K), row contiguous
    auto& w = inputs[1];  // (N, K), row or column contiguous
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(x);
    encoder.set_input_array(w);
    encoder.set_output_array(out);
    encoder.dispatch([x = mx::array::unsafe_weak_copy(x), w = mx::array::unsafe_weak_copy(w),
                      out = mx::array::unsafe_weak_copy(out)]() mutable {
      const int n = w.shape(0), k = w.shape(1);
      const int rows = x.size() / k;
      // A row-contiguous (N, K) is y = W x; its transposed view, a row-contiguous (K, N), is y = (W^T)^T x.
      const bool row_major = w.flags().row_contiguous;
      for (int r = 0; r < rows; ++r) {
        const float* xr = x.data<float>() + static_cast<size_t>(r) * k;
        float* yr = out.data<float>() + static_cast<size_t>(r) * n;
        if (row_major) {
          cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, w.data<float>(), k, xr, 1, 0.0f, yr, 1);
        } else {
          cblas_sgemv(CblasRowMajor, CblasTrans, k, n, 1.0f, w.data<float>(), n, xr, 1, 0.0f, yr, 1);
        }
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[gemv] CPU only: MLX's GPU matmul already has a GEMV.");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

  const char* name() const override { return "Gemv"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

mx::array gemv(const mx::array& x, const mx::array& w) {
  if (x.dtype() != mx::float32 || w.dtype() != mx::float32) {
    throw std::invalid_argument("[gemv] float32 only");
  }
  if (w.ndim() != 2 || x.ndim() < 1 || x.shape(-1) != w.shape(1)) {
    throw std::invalid_argument("[gemv] x (..., K) and w (N, K) expected");
  }
  auto s = mx::to_stream(mx::Device::cpu);
  // Both no-ops (a shared buffer) for the usual layouts; the flags are only known at eval time.
  auto xc = mx::contiguous(x, false, s);
  auto wc = mx::contiguous(w, true, s);
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<Gemv>(s), {xc, wc});
}

NB_MODULE(_gemv, m) {
  m.def("gemv", &gemv, nb::arg("x"), nb::arg("w"),
        "x @ w.T through the BLAS's sgemv, x (..., K) and w (N, K) in float32, on the CPU stream.");
}
