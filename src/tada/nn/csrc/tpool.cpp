// Fused CPU kernels for T-Pool, TAdaConv's temporal aggregation (tada.nn.aggregation).
//
// Layout: channels innermost. y is viewed (B, T, P, C): B videos, T frames, P pixels per frame, C
// channels, contiguous. The calibration's per-frame affine is scale / shift (B, T, C), contiguous (or
// absent). For every (b, t, p) row:
//
//   z      = y * scale + shift                              (the calibrated convolution output)
//   pooled = (z[t-1] + z[t] + z[t+1]) / 3                   (zero padding at both ends)
//   out    = N1(z) + N2(pooled)
//
// where N is a LayerNorm over C (mode "ln") or a per-channel affine x * w + b (mode "affine": a frozen
// BatchNorm). One pass reads y and writes out; the T rows of one (b, p) stay in a small buffer, where
// the plain composition makes five passes over the whole tensor (affine, pool, two norms, the sum).
//
// Built on first use by tada.nn._native (torch.utils.cpp_extension); Python falls back to the plain
// composition where this cannot be built.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
inline void row_moments(const scalar_t* x, int64_t n, scalar_t& mean, scalar_t& rstd, scalar_t eps) {
  scalar_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const scalar_t m = s / static_cast<scalar_t>(n);
  scalar_t v = 0;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t d = x[i] - m;
    v += d * d;
  }
  mean = m;
  rstd = scalar_t(1) / std::sqrt(v / static_cast<scalar_t>(n) + eps);
}

template <typename scalar_t>
void tpool_infer_kernel(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& w1,
                        const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, bool ln, double eps1,
                        double eps2, at::Tensor& out) {
  const int64_t B = y.size(0), T = y.size(1), P = y.size(2), C = y.size(3);
  const scalar_t* Y = y.const_data_ptr<scalar_t>();
  const scalar_t* S = scale.defined() ? scale.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* H = shift.defined() ? shift.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t *W1 = w1.const_data_ptr<scalar_t>(), *B1 = b1.const_data_ptr<scalar_t>();
  const scalar_t *W2 = w2.const_data_ptr<scalar_t>(), *B2 = b2.const_data_ptr<scalar_t>();
  scalar_t* O = out.mutable_data_ptr<scalar_t>();
  const scalar_t e1 = static_cast<scalar_t>(eps1), e2 = static_cast<scalar_t>(eps2);
  const scalar_t third = scalar_t(1) / scalar_t(3);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * C));
  at::parallel_for(0, B * P, grain, [&](int64_t lo, int64_t hi) {
    std::vector<scalar_t> buf(static_cast<size_t>(T * C));
    scalar_t* z = buf.data();
    for (int64_t bp = lo; bp < hi; ++bp) {
      const int64_t b = bp / P, p = bp % P;
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* yr = Y + ((b * T + t) * P + p) * C;
        const scalar_t* sr = S ? S + (b * T + t) * C : nullptr;
        const scalar_t* hr = H ? H + (b * T + t) * C : nullptr;
        scalar_t* zr = z + t * C;
        if (sr && hr) {
          for (int64_t c = 0; c < C; ++c) zr[c] = yr[c] * sr[c] + hr[c];
        } else if (sr) {
          for (int64_t c = 0; c < C; ++c) zr[c] = yr[c] * sr[c];
        } else if (hr) {
          for (int64_t c = 0; c < C; ++c) zr[c] = yr[c] + hr[c];
        } else {
          std::copy(yr, yr + C, zr);
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* zr = z + t * C;
        const scalar_t* zp = t > 0 ? zr - C : nullptr;
        const scalar_t* zn = t + 1 < T ? zr + C : nullptr;
        scalar_t* o = O + ((b * T + t) * P + p) * C;
        // the pooled row goes into the output row first, then the sum of both norms over it
        if (zp && zn) {
          for (int64_t c = 0; c < C; ++c) o[c] = (zp[c] + zr[c] + zn[c]) * third;
        } else if (zp) {
          for (int64_t c = 0; c < C; ++c) o[c] = (zp[c] + zr[c]) * third;
        } else if (zn) {
          for (int64_t c = 0; c < C; ++c) o[c] = (zr[c] + zn[c]) * third;
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] = zr[c] * third;
        }
        if (ln) {
          scalar_t m1, r1, m2, r2;
          row_moments(zr, C, m1, r1, e1);
          row_moments(o, C, m2, r2, e2);
          for (int64_t c = 0; c < C; ++c)
            o[c] = (zr[c] - m1) * r1 * W1[c] + B1[c] + ((o[c] - m2) * r2 * W2[c] + B2[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) o[c] = zr[c] * W1[c] + B1[c] + (o[c] * W2[c] + B2[c]);
        }
      }
    }
  });
}

void check_rows(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == y.scalar_type() && t.is_contiguous(), "tpool: ", name,
              " must be a contiguous CPU tensor of y's dtype");
  TORCH_CHECK(t.dim() == 3 && t.size(0) == y.size(0) && t.size(1) == y.size(1) && t.size(2) == y.size(3),
              "tpool: ", name, " must be (B, T, C)");
}

void check_vec(const at::Tensor& t, const at::Tensor& y, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == y.scalar_type() && t.is_contiguous() && t.dim() == 1 &&
                  t.size(0) == y.size(3),
              "tpool: ", name, " must be a contiguous (C,) CPU tensor of y's dtype");
}

at::Tensor tpool_infer(const at::Tensor& y, const c10::optional<at::Tensor>& scale,
                       const c10::optional<at::Tensor>& shift, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2, bool ln, double eps1, double eps2) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu() && y.is_contiguous(), "tpool: y must be a contiguous (B, T, P, C) CPU tensor");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, "tpool: float32 or float64 only");
  at::Tensor s = scale.has_value() ? *scale : at::Tensor();
  at::Tensor h = shift.has_value() ? *shift : at::Tensor();
  if (s.defined()) check_rows(s, y, "scale");
  if (h.defined()) check_rows(h, y, "shift");
  check_vec(w1, y, "w1");
  check_vec(b1, y, "b1");
  check_vec(w2, y, "w2");
  check_vec(b2, y, "b2");
  at::Tensor out = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_infer", [&] {
    tpool_infer_kernel<scalar_t>(y, s, h, w1, b1, w2, b2, ln, eps1, eps2, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(tada_native, m) {
  m.def("tpool_infer(Tensor y, Tensor? scale, Tensor? shift, Tensor w1, Tensor b1, Tensor w2, Tensor b2, bool ln, "
        "float eps1, float eps2) -> Tensor");
}

TORCH_LIBRARY_IMPL(tada_native, CPU, m) { m.impl("tpool_infer", tpool_infer); }
