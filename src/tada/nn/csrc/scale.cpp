// Fused CPU kernel for the backward of TAdaConv's input-channel calibration (tada.nn.functional,
// _ScaledInputConv): the fast path convolves x * a, so from the gradient g of that scaled input
//
//   grad a[n, c] = sum_p g[n, c, p] * x[n, c, p]       (one dot product per frame and channel)
//   grad x       = g * a[n, c]                          (written over g, in place)
//
// in one pass over g and x. The plain composition (a dot product that PyTorch evaluates as a product
// tensor and its sum, then the scaling) makes three to four passes and allocates an input-sized temporary.
//
// Layouts: g and x both contiguous (N, C, H, W), or both channels-last. Every sum runs over the pixels
// of one (n, c) in a fixed order, in one task: the results do not depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace {

// one (n, c) row of P contiguous pixels
template <typename scalar_t>
scalar_t row_nchw(scalar_t* __restrict g, const scalar_t* __restrict x, int64_t P, scalar_t s) {
  scalar_t acc = 0;
  for (int64_t p = 0; p < P; ++p) {
    const scalar_t gv = g[p];
    acc += gv * x[p];
    g[p] = gv * s;
  }
  return acc;
}

// channels [c0, c1) of one frame laid out (P, C)
template <typename scalar_t>
void block_cl(scalar_t* __restrict g, const scalar_t* __restrict x, int64_t P, int64_t C, int64_t c0, int64_t c1,
              const scalar_t* __restrict s, scalar_t* __restrict acc) {
  const int64_t w = c1 - c0;
  for (int64_t j = 0; j < w; ++j) acc[j] = 0;
  for (int64_t p = 0; p < P; ++p) {
    scalar_t* __restrict gr = g + p * C + c0;
    const scalar_t* __restrict xr = x + p * C + c0;
    for (int64_t j = 0; j < w; ++j) {
      const scalar_t gv = gr[j];
      acc[j] += gv * xr[j];
      gr[j] = gv * s[j];
    }
  }
}

constexpr int64_t kBlock = 64;  // channels per task on the channels-last layout

at::Tensor cin_scale_backward(at::Tensor& g, const at::Tensor& x, const at::Tensor& a) {
  TORCH_CHECK(g.dim() == 4 && g.device().is_cpu() && x.device().is_cpu() && a.device().is_cpu(),
              "cin_scale_backward: g and x must be (N, C, H, W) CPU tensors");
  TORCH_CHECK(g.sizes() == x.sizes(), "cin_scale_backward: g and x must have the same shape");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && g.scalar_type() == a.scalar_type() &&
                  (g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble),
              "cin_scale_backward: g, x and a must all be float32 or all float64");
  const int64_t N = g.size(0), C = g.size(1), P = g.size(2) * g.size(3);
  TORCH_CHECK(a.dim() == 2 && a.size(0) == N && a.size(1) == C && a.is_contiguous(),
              "cin_scale_backward: a must be a contiguous (N, C) tensor");
  const bool nchw = g.is_contiguous() && x.is_contiguous();
  const bool cl = g.is_contiguous(at::MemoryFormat::ChannelsLast) && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(nchw || cl, "cin_scale_backward: g and x must both be contiguous, or both channels-last");
  at::Tensor ga = at::empty({N, C}, a.options());
  if (g.numel() == 0) return ga.zero_();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cin_scale_backward", [&] {
    scalar_t* G = g.mutable_data_ptr<scalar_t>();
    const scalar_t* X = x.const_data_ptr<scalar_t>();
    const scalar_t* S = a.const_data_ptr<scalar_t>();
    scalar_t* GA = ga.mutable_data_ptr<scalar_t>();
    if (nchw) {  // (also where both layouts hold: C == 1 or H * W == 1)
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(P, 1));
      at::parallel_for(0, N * C, grain, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) GA[r] = row_nchw<scalar_t>(G + r * P, X + r * P, P, S[r]);
      });
    } else {
      const int64_t blocks = (C + kBlock - 1) / kBlock;
      at::parallel_for(0, N * blocks, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t k = lo; k < hi; ++k) {
          const int64_t n = k / blocks, c0 = (k % blocks) * kBlock, c1 = std::min(C, c0 + kBlock);
          block_cl<scalar_t>(G + n * P * C, X + n * P * C, P, C, c0, c1, S + n * C + c0, GA + n * C + c0);
        }
      });
    }
  });
  return ga;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tada_native, m) {
  m.def("cin_scale_backward(Tensor(a!) g, Tensor x, Tensor a) -> Tensor");
}

TORCH_LIBRARY_IMPL(tada_native, CPU, m) {
  m.impl("cin_scale_backward", cin_scale_backward);
}
