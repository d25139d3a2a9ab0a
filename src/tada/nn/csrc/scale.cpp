// Fused CPU kernel for the backward of TAdaConv's input-channel calibration (tada.nn.functional,
// _ScaledInputConv): the fast path convolves x * a, so from the gradient g of that scaled input
//
//   grad a[n, c] = sum_p g[n, c, p] * x[n, c, p]       (one dot product per frame and channel)
//   grad x       = g * a[n, c]                          (written over g, in place)
//
// in one pass over g and x. The plain composition (a dot product that PyTorch evaluates as a product
// tensor and its sum, then the scaling) makes three to four passes and allocates an input-sized temporary.
//
// And the inference forward of a TAdaConv that follows a BatchNorm (with running statistics, folded to
// a per-channel scale s and shift b) and a ReLU (tada.nn.TAdaConv2d.forward_after_bn_relu): with
// r = max(0, z * s[c] + b[c]),
//
//   bn_relu_mean:  v[n, c]   = mean_p r[n, c, p]               (the routing's descriptor; reads z only)
//   bn_relu_scale: xa[n,c,p] = r[n, c, p] * a[n, c]              (the scaled input, in z's layout)
//
// two passes over z where the composition makes four reads and three writes (the norm, the in-place
// ReLU, the mean, the scaling).
//
// Layouts: g and x (z) both contiguous (N, C, H, W), or both channels-last. Every sum runs over the pixels
// of one (n, c) in a fixed order, in one task: the results do not depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

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

// -- BatchNorm (folded) + ReLU, then the routing's mean or the calibration's scaling ------------------
template <typename scalar_t>
inline scalar_t bn_relu(scalar_t z, scalar_t s, scalar_t b) {
  const scalar_t r = z * s + b;
  return r > scalar_t(0) ? r : scalar_t(0);
}

void check_bn_relu_args(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, const char* name) {
  TORCH_CHECK(z.dim() == 4 && z.device().is_cpu() && scale.device().is_cpu() && shift.device().is_cpu(), name,
              ": z must be an (N, C, H, W) CPU tensor");
  TORCH_CHECK(z.scalar_type() == scale.scalar_type() && z.scalar_type() == shift.scalar_type() &&
                  (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
              name, ": z, scale and shift must all be float32 or all float64");
  TORCH_CHECK(scale.dim() == 1 && shift.dim() == 1 && scale.size(0) == z.size(1) && shift.size(0) == z.size(1) &&
                  scale.is_contiguous() && shift.is_contiguous(),
              name, ": scale and shift must be contiguous (C,) tensors");
  TORCH_CHECK(z.is_contiguous() || z.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              ": z must be contiguous or channels-last");
}

at::Tensor bn_relu_mean(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift) {
  check_bn_relu_args(z, scale, shift, "bn_relu_mean");
  const int64_t N = z.size(0), C = z.size(1), P = z.size(2) * z.size(3);
  at::Tensor v = at::empty({N, C}, z.options().memory_format(at::MemoryFormat::Contiguous));
  if (v.numel() == 0) return v;
  if (P == 0) return v.fill_(std::numeric_limits<double>::quiet_NaN());  // the mean of nothing, as torch.mean
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_relu_mean", [&] {
    const scalar_t* Z = z.const_data_ptr<scalar_t>();
    const scalar_t* S = scale.const_data_ptr<scalar_t>();
    const scalar_t* B = shift.const_data_ptr<scalar_t>();
    scalar_t* V = v.mutable_data_ptr<scalar_t>();
    const scalar_t inv = scalar_t(1) / scalar_t(P);
    if (z.is_contiguous()) {
      const int64_t grain = std::max<int64_t>(1, 16384 / P);
      at::parallel_for(0, N * C, grain, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const scalar_t* __restrict zr = Z + r * P;
          const scalar_t s = S[r % C], b = B[r % C];
          scalar_t acc = 0;
          for (int64_t p = 0; p < P; ++p) acc += bn_relu(zr[p], s, b);
          V[r] = acc * inv;
        }
      });
    } else {
      const int64_t blocks = (C + kBlock - 1) / kBlock;
      at::parallel_for(0, N * blocks, 1, [&](int64_t lo, int64_t hi) {
        scalar_t acc[kBlock];
        for (int64_t k = lo; k < hi; ++k) {
          const int64_t n = k / blocks, c0 = (k % blocks) * kBlock, w = std::min(C, c0 + kBlock) - c0;
          for (int64_t j = 0; j < w; ++j) acc[j] = 0;
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t* __restrict zr = Z + (n * P + p) * C + c0;
            for (int64_t j = 0; j < w; ++j) acc[j] += bn_relu(zr[j], S[c0 + j], B[c0 + j]);
          }
          for (int64_t j = 0; j < w; ++j) V[n * C + c0 + j] = acc[j] * inv;
        }
      });
    }
  });
  return v;
}

at::Tensor bn_relu_scale(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& a) {
  check_bn_relu_args(z, scale, shift, "bn_relu_scale");
  const int64_t N = z.size(0), C = z.size(1), P = z.size(2) * z.size(3);
  TORCH_CHECK(a.device().is_cpu() && a.scalar_type() == z.scalar_type() && a.dim() == 2 && a.size(0) == N &&
                  a.size(1) == C && a.is_contiguous(),
              "bn_relu_scale: a must be a contiguous (N, C) CPU tensor of z's dtype");
  const bool nchw = z.is_contiguous();
  at::Tensor out = at::empty_like(z, nchw ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "bn_relu_scale", [&] {
    const scalar_t* Z = z.const_data_ptr<scalar_t>();
    const scalar_t* S = scale.const_data_ptr<scalar_t>();
    const scalar_t* B = shift.const_data_ptr<scalar_t>();
    const scalar_t* A = a.const_data_ptr<scalar_t>();
    scalar_t* O = out.mutable_data_ptr<scalar_t>();
    if (nchw) {
      const int64_t grain = std::max<int64_t>(1, 16384 / P);
      at::parallel_for(0, N * C, grain, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const scalar_t* __restrict zr = Z + r * P;
          scalar_t* __restrict o = O + r * P;
          const scalar_t s = S[r % C], b = B[r % C], m = A[r];
          for (int64_t p = 0; p < P; ++p) o[p] = bn_relu(zr[p], s, b) * m;
        }
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 16384 / C);
      at::parallel_for(0, N * P, grain, [&](int64_t lo, int64_t hi) {
        for (int64_t q = lo; q < hi; ++q) {
          const scalar_t* __restrict zr = Z + q * C;
          const scalar_t* __restrict m = A + (q / P) * C;
          scalar_t* __restrict o = O + q * C;
          for (int64_t c = 0; c < C; ++c) o[c] = bn_relu(zr[c], S[c], B[c]) * m[c];
        }
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tada_native, m) {
  m.def("cin_scale_backward(Tensor(a!) g, Tensor x, Tensor a) -> Tensor");
  m.def("bn_relu_mean(Tensor z, Tensor scale, Tensor shift) -> Tensor");
  m.def("bn_relu_scale(Tensor z, Tensor scale, Tensor shift, Tensor a) -> Tensor");
}

TORCH_LIBRARY_IMPL(tada_native, CPU, m) {
  m.impl("cin_scale_backward", cin_scale_backward);
  m.impl("bn_relu_mean", bn_relu_mean);
  m.impl("bn_relu_scale", bn_relu_scale);
}
