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
// where N is a LayerNorm over C (ln) or a per-channel affine x * w + b (a BatchNorm with known
// statistics). Each kernel works on the T rows of one (b, p) at a time, kept in small zero-padded
// buffers, so that one pass over y (and the output gradient) replaces the five to ten passes of the
// plain composition (affine, pool, two norms, the sum, and their backwards).
//
// Sums over pixels run per fixed chunk of pixels of one video (not per thread) and are then added in
// chunk order: the results do not depend on the number of threads.
//
// Built on first use by tada.nn._native (torch.utils.cpp_extension); Python falls back to the plain
// composition where this cannot be built.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

// chunks of at most `rows` pixels of one video
struct Chunks {
  int64_t rows, per_b, count;
  Chunks(int64_t B, int64_t P) {
    rows = std::max<int64_t>(1, std::min<int64_t>(64, (P + 15) / 16));
    per_b = (P + rows - 1) / rows;
    count = B * per_b;
  }
  int64_t video(int64_t k) const { return k / per_b; }
  int64_t first(int64_t k) const { return (k % per_b) * rows; }
  int64_t last(int64_t k, int64_t P) const { return std::min(P, first(k) + rows); }
};

template <typename scalar_t>
struct Problem {
  int64_t B, T, P, C;
  const scalar_t *Y, *S, *H;  // S, H: (B, T, C) or null
  Problem(const at::Tensor& y, const at::Tensor& s, const at::Tensor& h)
      : B(y.size(0)), T(y.size(1)), P(y.size(2)), C(y.size(3)), Y(y.const_data_ptr<scalar_t>()),
        S(s.defined() ? s.const_data_ptr<scalar_t>() : nullptr), H(h.defined() ? h.const_data_ptr<scalar_t>() : nullptr) {}
  int64_t at(int64_t b, int64_t t, int64_t p) const { return ((b * T + t) * P + p) * C; }
};

// Per-thread rows of one (b, p): z and its pool, each (T + 2) x C with a zero row at either end, so that
// the 3-frame sums need no branches.
template <typename scalar_t>
struct Rows {
  const Problem<scalar_t>& pr;
  std::vector<scalar_t> zbuf, pbuf, gbuf, ones, zeros, local;
  Rows(const Problem<scalar_t>& pr, bool grad, int64_t extra = 0)
      : pr(pr), zbuf((pr.T + 2) * pr.C, scalar_t(0)), pbuf((pr.T + 2) * pr.C, scalar_t(0)),
        gbuf(grad ? (pr.T + 2) * pr.C : 0, scalar_t(0)), ones(pr.C, scalar_t(1)), zeros(pr.C, scalar_t(0)),
        local(extra) {}
  scalar_t* z(int64_t t) { return zbuf.data() + (t + 1) * pr.C; }
  scalar_t* pooled(int64_t t) { return pbuf.data() + (t + 1) * pr.C; }
  scalar_t* gpooled(int64_t t) { return gbuf.data() + (t + 1) * pr.C; }
  const scalar_t* scale(int64_t b, int64_t t) const { return pr.S ? pr.S + (b * pr.T + t) * pr.C : ones.data(); }
  const scalar_t* shift(int64_t b, int64_t t) const { return pr.H ? pr.H + (b * pr.T + t) * pr.C : zeros.data(); }

  // z and the pooled z of pixel p of video b
  void load(int64_t b, int64_t p) {
    const int64_t C = pr.C;
    for (int64_t t = 0; t < pr.T; ++t) {
      const scalar_t* __restrict__ yr = pr.Y + pr.at(b, t, p);
      const scalar_t* __restrict__ sr = scale(b, t);
      const scalar_t* __restrict__ hr = shift(b, t);
      scalar_t* __restrict__ zr = z(t);
      for (int64_t c = 0; c < C; ++c) zr[c] = yr[c] * sr[c] + hr[c];
    }
    pool(zbuf.data(), pbuf.data());
  }

  // dst[t] = (src[t - 1] + src[t] + src[t + 1]) / 3 over padded buffers
  void pool(const scalar_t* src, scalar_t* dst) const {
    const int64_t C = pr.C;
    const scalar_t third = scalar_t(1) / scalar_t(3);
    for (int64_t t = 1; t <= pr.T; ++t) {
      const scalar_t* __restrict__ a = src + (t - 1) * C;
      const scalar_t* __restrict__ m = src + t * C;
      const scalar_t* __restrict__ n = src + (t + 1) * C;
      scalar_t* __restrict__ o = dst + t * C;
      for (int64_t c = 0; c < C; ++c) o[c] = (a[c] + m[c] + n[c]) * third;
    }
  }
};

// One Rows per thread, allocated here on the calling thread (not inside the parallel region, where
// glibc would serve each worker from its own arena), picked by at::get_thread_num().
template <typename scalar_t>
std::vector<Rows<scalar_t>> thread_rows(const Problem<scalar_t>& pr, bool grad, int64_t extra = 0) {
  std::vector<Rows<scalar_t>> rows;
  const int n = std::max(1, at::get_num_threads());
  rows.reserve(n);
  for (int i = 0; i < n; ++i) rows.emplace_back(pr, grad, extra);
  return rows;
}

template <typename scalar_t>
inline void row_moments(const scalar_t* __restrict__ x, int64_t n, scalar_t eps, scalar_t& mean, scalar_t& rstd) {
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

// ---- forward / inference: out = N1(z) + N2(pooled) -------------------------------------------------
template <typename scalar_t>
void infer_kernel(const Problem<scalar_t>& pr, const scalar_t* W1, const scalar_t* B1, const scalar_t* W2,
                  const scalar_t* B2, bool ln, scalar_t e1, scalar_t e2, scalar_t* O) {
  const Chunks ch(pr.B, pr.P);
  const int64_t C = pr.C;
  auto pool = thread_rows(pr, false);
  at::parallel_for(0, ch.count, 1, [&](int64_t lo, int64_t hi) {
    Rows<scalar_t>& rows = pool[at::get_thread_num()];
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t b = ch.video(k);
      for (int64_t p = ch.first(k); p < ch.last(k, pr.P); ++p) {
        rows.load(b, p);
        for (int64_t t = 0; t < pr.T; ++t) {
          const scalar_t* __restrict__ zr = rows.z(t);
          const scalar_t* __restrict__ pz = rows.pooled(t);
          scalar_t* __restrict__ o = O + pr.at(b, t, p);
          if (ln) {
            scalar_t m1, r1, m2, r2;
            row_moments(zr, C, e1, m1, r1);
            row_moments(pz, C, e2, m2, r2);
            for (int64_t c = 0; c < C; ++c)
              o[c] = (zr[c] - m1) * r1 * W1[c] + B1[c] + ((pz[c] - m2) * r2 * W2[c] + B2[c]);
          } else {
            for (int64_t c = 0; c < C; ++c) o[c] = zr[c] * W1[c] + B1[c] + (pz[c] * W2[c] + B2[c]);
          }
        }
      }
    }
  });
}


// Inner loops over one row of C channels, as functions so that their pointers are restrict-qualified
// (GCC then vectorises them; several accumulators in one buffer look like possible aliases otherwise).
template <typename scalar_t>
inline void ln_row_grads(int64_t C, const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                         const scalar_t* __restrict__ pz, const scalar_t* __restrict__ W1,
                         const scalar_t* __restrict__ W2, scalar_t m1, scalar_t r1, scalar_t m2, scalar_t r2,
                         scalar_t* __restrict__ gw1, scalar_t* __restrict__ gw2, scalar_t* __restrict__ gb,
                         scalar_t* __restrict__ gz1, scalar_t* __restrict__ gp) {
  const scalar_t invc = scalar_t(1) / static_cast<scalar_t>(C);
  scalar_t a1 = 0, c1 = 0, a2 = 0, c2 = 0;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t x1 = (z[c] - m1) * r1, x2 = (pz[c] - m2) * r2;
    const scalar_t g1 = g[c] * W1[c], g2 = g[c] * W2[c];
    gw1[c] += g[c] * x1;
    gw2[c] += g[c] * x2;
    gb[c] += g[c];
    a1 += g1;
    c1 += g1 * x1;
    a2 += g2;
    c2 += g2 * x2;
  }
  a1 *= invc, c1 *= invc, a2 *= invc, c2 *= invc;
  for (int64_t c = 0; c < C; ++c) {
    gz1[c] = r1 * (g[c] * W1[c] - a1 - (z[c] - m1) * r1 * c1);
    gp[c] = r2 * (g[c] * W2[c] - a2 - (pz[c] - m2) * r2 * c2);
  }
}

template <typename scalar_t>
inline void add_row(int64_t C, scalar_t* __restrict__ o, const scalar_t* __restrict__ v) {
  for (int64_t c = 0; c < C; ++c) o[c] += v[c];
}

template <typename scalar_t>
inline void affine_row_grads(int64_t C, const scalar_t* __restrict__ y, const scalar_t* __restrict__ s,
                             scalar_t* __restrict__ o, scalar_t* __restrict__ gs, scalar_t* __restrict__ gh) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t gu = o[c];
    gs[c] += gu * y[c];
    gh[c] += gu;
    o[c] = gu * s[c];
  }
}

template <typename scalar_t>
inline void shifted_moments_row(int64_t C, const scalar_t* __restrict__ z, const scalar_t* __restrict__ pz,
                                const scalar_t* __restrict__ kz, const scalar_t* __restrict__ kp,
                                scalar_t* __restrict__ sz, scalar_t* __restrict__ szz, scalar_t* __restrict__ sp,
                                scalar_t* __restrict__ spp) {
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t dz = z[c] - kz[c], dp = pz[c] - kp[c];
    sz[c] += dz;
    szz[c] += dz * dz;
    sp[c] += dp;
    spp[c] += dp * dp;
  }
}

template <typename scalar_t>
inline void bn_sums_row(int64_t C, const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                        const scalar_t* __restrict__ pz, const scalar_t* __restrict__ M1,
                        const scalar_t* __restrict__ R1, const scalar_t* __restrict__ M2,
                        const scalar_t* __restrict__ R2, scalar_t* __restrict__ sg, scalar_t* __restrict__ sg1,
                        scalar_t* __restrict__ sg2) {
  for (int64_t c = 0; c < C; ++c) {
    sg[c] += g[c];
    sg1[c] += g[c] * (z[c] - M1[c]) * R1[c];
    sg2[c] += g[c] * (pz[c] - M2[c]) * R2[c];
  }
}

template <typename scalar_t>
inline void bn_row_grads(int64_t C, const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                         const scalar_t* __restrict__ pz, const scalar_t* __restrict__ M1,
                         const scalar_t* __restrict__ K1, const scalar_t* __restrict__ Q1,
                         const scalar_t* __restrict__ M2, const scalar_t* __restrict__ K2,
                         const scalar_t* __restrict__ Q2, const scalar_t* __restrict__ Q0,
                         scalar_t* __restrict__ gz1, scalar_t* __restrict__ gp) {
  for (int64_t c = 0; c < C; ++c) {
    gp[c] = K2[c] * (g[c] - Q0[c] - (pz[c] - M2[c]) * Q2[c]);
    gz1[c] = K1[c] * (g[c] - Q0[c] - (z[c] - M1[c]) * Q1[c]);
  }
}

// The gradient of u = y * scale + shift, given gu in the rows of GY: GY becomes gu * scale, and the chunk's
// sums gscale += gu * y, gshift += gu go into acc (T*C each).
template <typename scalar_t>
inline void finish_rows(const Rows<scalar_t>& rows, int64_t b, int64_t p, scalar_t* GY, scalar_t* as, scalar_t* ah) {
  const auto& pr = rows.pr;
  const int64_t C = pr.C;
  for (int64_t t = 0; t < pr.T; ++t)
    affine_row_grads(C, pr.Y + pr.at(b, t, p), rows.scale(b, t), GY + pr.at(b, t, p), as + t * C, ah + t * C);
}

template <typename scalar_t>
void add_chunks(const Chunks& ch, const Problem<scalar_t>& pr, const std::vector<scalar_t>& acc, int64_t width,
                scalar_t* GS, scalar_t* GH, scalar_t* GPm, int64_t nparams) {
  const int64_t TC = pr.T * pr.C;
  std::fill(GS, GS + pr.B * TC, scalar_t(0));
  std::fill(GH, GH + pr.B * TC, scalar_t(0));
  if (GPm) std::fill(GPm, GPm + nparams, scalar_t(0));
  for (int64_t k = 0; k < ch.count; ++k) {
    const scalar_t* a = acc.data() + k * width;
    scalar_t *gs = GS + ch.video(k) * TC, *gh = GH + ch.video(k) * TC;
    for (int64_t i = 0; i < TC; ++i) gs[i] += a[i];
    for (int64_t i = 0; i < TC; ++i) gh[i] += a[TC + i];
    if (GPm)
      for (int64_t i = 0; i < nparams; ++i) GPm[i] += a[2 * TC + i];
  }
}

// The backward pass shared by both norms: per (b, p), grads(rows, b, p, t, a) writes row t's gradient
// through N1 into GY's row and through N2 into rows.gpooled(t) (and may add per-chunk sums into a, after
// the 2*T*C affine sums); then gu = that + pool(gpooled), and finish_rows. Returns the per-chunk sums.
template <typename scalar_t, typename Grads>
std::vector<scalar_t> grad_pass(const Problem<scalar_t>& pr, const Chunks& ch, int64_t width, scalar_t* GY,
                                const Grads& grads) {
  const int64_t C = pr.C, TC = pr.T * C;
  std::vector<scalar_t> acc(ch.count * width, scalar_t(0));
  auto pool = thread_rows(pr, true);
  at::parallel_for(0, ch.count, 1, [&](int64_t lo, int64_t hi) {
    Rows<scalar_t>& rows = pool[at::get_thread_num()];
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t b = ch.video(k);
      scalar_t* a = acc.data() + k * width;
      for (int64_t p = ch.first(k); p < ch.last(k, pr.P); ++p) {
        rows.load(b, p);
        for (int64_t t = 0; t < pr.T; ++t) grads(rows, b, p, t, a + 2 * TC);
        rows.pool(rows.gbuf.data(), rows.pbuf.data());  // pbuf := pool(gp) (the pooled z is no longer needed)
        for (int64_t t = 0; t < pr.T; ++t) add_row(C, GY + pr.at(b, t, p), rows.pooled(t));
        finish_rows(rows, b, p, GY, a, a + TC);
      }
    }
  });
  return acc;
}

// ---- LayerNorm backward ------------------------------------------------------------------------------
// For every row, with g1 = gz * w1 and x1 = (z - mean1) * rstd1 (likewise g2, x2 for the pooled row):
//   gz1 = rstd1 * (g1 - mean_c(g1) - x1 * mean_c(g1 * x1))       (LayerNorm's input gradient)
//   gp  = rstd2 * (g2 - mean_c(g2) - x2 * mean_c(g2 * x2))
//   gu  = gz1 + (gp[t-1] + gp[t] + gp[t+1]) / 3                  (the pool is its own adjoint)
//   gw  = sum gz * x,  gb = sum gz
template <typename scalar_t>
void ln_backward_kernel(const Problem<scalar_t>& pr, const scalar_t* G, const scalar_t* W1, const scalar_t* W2,
                        scalar_t e1, scalar_t e2, scalar_t* GY, scalar_t* GS, scalar_t* GH, scalar_t* GPm) {
  const Chunks ch(pr.B, pr.P);
  const int64_t C = pr.C, TC = pr.T * C, width = 2 * TC + 4 * C;
  const std::vector<scalar_t> acc = grad_pass(pr, ch, width, GY, [&](Rows<scalar_t>& rows, int64_t b, int64_t p,
                                                                    int64_t t, scalar_t* a) {
    scalar_t *gw1 = a, *gb = a + C, *gw2 = a + 2 * C;  // (gb2 == gb1: both are sum gz)
    const scalar_t* zr = rows.z(t);
    const scalar_t* pz = rows.pooled(t);
    scalar_t m1, r1, m2, r2;
    row_moments(zr, C, e1, m1, r1);
    row_moments(pz, C, e2, m2, r2);
    ln_row_grads(C, G + pr.at(b, t, p), zr, pz, W1, W2, m1, r1, m2, r2, gw1, gw2, gb, GY + pr.at(b, t, p),
                 rows.gpooled(t));
  });
  add_chunks(ch, pr, acc, width, GS, GH, GPm, 3 * C);
  std::copy(GPm + C, GPm + 2 * C, GPm + 3 * C);  // gb2 = gb1
}

// ---- BatchNorm (batch statistics): forward statistics and backward -----------------------------------
// Per-channel sums over every pixel and frame: row(rows, b, p, t, a) adds one row's terms into a (width
// values, of scalar_t) per chunk; the chunks' sums are added in chunk order in float64.
template <typename scalar_t, typename Row>
std::vector<double> chunk_sums(const Problem<scalar_t>& pr, const Chunks& ch, int64_t width, const Row& row) {
  std::vector<double> acc(ch.count * width);
  auto pool = thread_rows(pr, false, width);
  at::parallel_for(0, ch.count, 1, [&](int64_t lo, int64_t hi) {
    Rows<scalar_t>& rows = pool[at::get_thread_num()];
    for (int64_t k = lo; k < hi; ++k) {
      scalar_t* a = rows.local.data();
      std::fill(a, a + width, scalar_t(0));
      const int64_t b = ch.video(k);
      for (int64_t p = ch.first(k); p < ch.last(k, pr.P); ++p) {
        rows.load(b, p);
        for (int64_t t = 0; t < pr.T; ++t) row(rows, b, p, t, a);
      }
      std::copy(a, a + width, acc.begin() + k * width);
    }
  });
  std::vector<double> tot(width, 0.0);
  for (int64_t k = 0; k < ch.count; ++k)
    for (int64_t i = 0; i < width; ++i) tot[i] += acc[k * width + i];
  return tot;
}

// Per channel, the mean and (biased) variance over (B, T, P) of z and of the pooled z, as float64 (4, C).
// The sums are shifted by the first pixel's values, so that a large mean does not cancel the variance.
template <typename scalar_t>
void bn_stats_kernel(const Problem<scalar_t>& pr, double* st) {
  const Chunks ch(pr.B, pr.P);
  const int64_t C = pr.C;
  Rows<scalar_t> first(pr, false);
  first.load(0, 0);
  const std::vector<scalar_t> Kz(first.z(0), first.z(0) + C), Kp(first.pooled(0), first.pooled(0) + C);
  const std::vector<double> tot = chunk_sums(pr, ch, 4 * C, [&](Rows<scalar_t>& rows, int64_t, int64_t, int64_t t, scalar_t* a) {
    shifted_moments_row(C, rows.z(t), rows.pooled(t), Kz.data(), Kp.data(), a, a + C, a + 2 * C, a + 3 * C);
  });
  const double n = static_cast<double>(pr.B * pr.T * pr.P);
  for (int64_t c = 0; c < C; ++c) {
    for (int j = 0; j < 2; ++j) {
      const double s1 = tot[2 * j * C + c] / n, s2 = tot[(2 * j + 1) * C + c] / n;
      st[2 * j * C + c] = static_cast<double>(j == 0 ? Kz[c] : Kp[c]) + s1;
      st[(2 * j + 1) * C + c] = std::max(0.0, s2 - s1 * s1);
    }
  }
}

// norm (6, C): mean1, rstd1, w1, mean2, rstd2, w2. With x = (v - mean) * rstd and N = B*T*P:
//   gv = w * rstd * (gz - sum(gz) / N - x * sum(gz * x) / N)  for v = z and v = pooled
//   gu = gz1 + pool(gp)
// Two passes: the per-channel sums (also gw = sum gz * x and gb = sum gz), then the gradients.
template <typename scalar_t>
void bn_backward_kernel(const Problem<scalar_t>& pr, const scalar_t* G, const scalar_t* NM, scalar_t* GY,
                        scalar_t* GS, scalar_t* GH, scalar_t* GPm) {
  const Chunks ch(pr.B, pr.P);
  const int64_t C = pr.C, TC = pr.T * C;
  const scalar_t *M1 = NM, *R1 = NM + C, *W1 = NM + 2 * C, *M2 = NM + 3 * C, *R2 = NM + 4 * C, *W2 = NM + 5 * C;
  const std::vector<double> tot = chunk_sums(pr, ch, 3 * C, [&](Rows<scalar_t>& rows, int64_t b, int64_t p, int64_t t,
                                                                scalar_t* a) {
    bn_sums_row(C, G + pr.at(b, t, p), rows.z(t), rows.pooled(t), M1, R1, M2, R2, a, a + C, a + 2 * C);
  });
  const double n = static_cast<double>(pr.B * pr.T * pr.P);
  // per channel: k1 = w1 * rstd1, q0 = sum(gz) / N, q1 = sum(gz x1) / N * rstd1 (likewise for the pool)
  std::vector<scalar_t> q(6 * C);
  for (int64_t c = 0; c < C; ++c) {
    q[c] = W1[c] * R1[c];
    q[C + c] = static_cast<scalar_t>(tot[c] / n);
    q[2 * C + c] = static_cast<scalar_t>(tot[C + c] / n) * R1[c];
    q[3 * C + c] = W2[c] * R2[c];
    q[4 * C + c] = static_cast<scalar_t>(tot[2 * C + c] / n) * R2[c];
    GPm[c] = static_cast<scalar_t>(tot[C + c]);  // gw1
    GPm[C + c] = static_cast<scalar_t>(tot[c]);  // gb1
    GPm[2 * C + c] = static_cast<scalar_t>(tot[2 * C + c]);  // gw2
    GPm[3 * C + c] = static_cast<scalar_t>(tot[c]);  // gb2
  }
  const scalar_t *K1 = q.data(), *Q0 = K1 + C, *Q1 = Q0 + C, *K2 = Q1 + C, *Q2 = K2 + C;
  const int64_t width = 2 * TC;
  const std::vector<scalar_t> sacc = grad_pass(pr, ch, width, GY, [&](Rows<scalar_t>& rows, int64_t b, int64_t p,
                                                                     int64_t t, scalar_t*) {
    bn_row_grads(C, G + pr.at(b, t, p), rows.z(t), rows.pooled(t), M1, K1, Q1, M2, K2, Q2, Q0, GY + pr.at(b, t, p),
                 rows.gpooled(t));
  });
  add_chunks<scalar_t>(ch, pr, sacc, width, GS, GH, nullptr, 0);
}

// ---- entry points ------------------------------------------------------------------------------------
at::Tensor opt(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

void check_y(const at::Tensor& y) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu() && y.is_contiguous(), "tpool: y must be a contiguous (B, T, P, C) CPU tensor");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, "tpool: float32 or float64 only");
  TORCH_CHECK(y.numel() > 0, "tpool: y is empty");
}

void check_like(const at::Tensor& g, const at::Tensor& y, const char* name) {
  TORCH_CHECK(g.sizes() == y.sizes() && g.scalar_type() == y.scalar_type() && g.is_contiguous() && g.device().is_cpu(),
              "tpool: ", name, " must be laid out like y");
}

void check_affine(const at::Tensor& s, const at::Tensor& h, const at::Tensor& y) {
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{s, "scale"}, {h, "shift"}}) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == y.scalar_type() && t.is_contiguous() && t.dim() == 3 &&
                    t.size(0) == y.size(0) && t.size(1) == y.size(1) && t.size(2) == y.size(3),
                "tpool: ", name, " must be a contiguous (B, T, C) CPU tensor of y's dtype");
  }
}

void check_vec(const at::Tensor& t, const at::Tensor& y) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == y.scalar_type() && t.is_contiguous() && t.dim() == 1 &&
                  t.size(0) == y.size(3),
              "tpool: the norm parameters must be contiguous (C,) CPU tensors of y's dtype");
}

at::Tensor tpool_infer(const at::Tensor& y, const c10::optional<at::Tensor>& scale,
                       const c10::optional<at::Tensor>& shift, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2, bool ln, double eps1, double eps2) {
  check_y(y);
  at::Tensor s = opt(scale), h = opt(shift);
  check_affine(s, h, y);
  for (const auto& v : {w1, b1, w2, b2}) check_vec(v, y);
  at::Tensor out = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_infer", [&] {
    infer_kernel<scalar_t>(Problem<scalar_t>(y, s, h), w1.const_data_ptr<scalar_t>(), b1.const_data_ptr<scalar_t>(),
                           w2.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), ln,
                           static_cast<scalar_t>(eps1), static_cast<scalar_t>(eps2), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

// Frozen-BatchNorm T-Pool inference on frame-major frames (TAda2D's layout): y (B*T, C, H, W) contiguous,
// out = y * a1[c] + avgpool_t(y) * a2[c] + k[c] (avgpool_t: the mean of frames t-1, t, t+1 with zero padding),
// then an optional ReLU, in one pass (the three frames of a window are rows of one (b, c), read while
// the previous ones are still in cache).
at::Tensor tpool_frozen_frames(const at::Tensor& y, int64_t frames, const at::Tensor& a1, const at::Tensor& a2,
                               const at::Tensor& k, bool relu) {
  TORCH_CHECK(y.dim() == 4 && y.device().is_cpu() && y.is_contiguous(),
              "tpool_frozen_frames: y must be a contiguous (B*T, C, H, W) CPU tensor");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, "tpool_frozen_frames: float32 or float64 only");
  TORCH_CHECK(frames >= 1 && y.size(0) % frames == 0, "tpool_frozen_frames: the batch of ", y.size(0),
              " frames is not a multiple of frames=", frames);
  for (const auto& v : {a1, a2, k}) {
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == y.scalar_type() && v.is_contiguous() && v.dim() == 1 &&
                    v.size(0) == y.size(1),
                "tpool_frozen_frames: a1, a2 and k must be contiguous (C,) CPU tensors of y's dtype");
  }
  at::Tensor out = at::empty_like(y, at::MemoryFormat::Contiguous);
  const int64_t T = frames, B = y.size(0) / T, C = y.size(1), P = y.size(2) * y.size(3);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_frozen_frames", [&] {
    const scalar_t* Y = y.const_data_ptr<scalar_t>();
    const scalar_t* A1 = a1.const_data_ptr<scalar_t>();
    const scalar_t* A2 = a2.const_data_ptr<scalar_t>();
    const scalar_t* K = k.const_data_ptr<scalar_t>();
    scalar_t* O = out.mutable_data_ptr<scalar_t>();
    const scalar_t third = scalar_t(1) / scalar_t(3);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(P * T, 1));
    at::parallel_for(0, B * C, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t b = r / C, c = r % C;
        const scalar_t s1 = A1[c], s2 = A2[c], kc = K[c];
        for (int64_t t = 0; t < T; ++t) {
          const int64_t row = ((b * T + t) * C + c) * P;
          const scalar_t* __restrict cur = Y + row;
          const scalar_t* __restrict prev = t > 0 ? cur - C * P : nullptr;
          const scalar_t* __restrict next = t + 1 < T ? cur + C * P : nullptr;
          scalar_t* __restrict o = O + row;
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t win = (prev ? prev[p] : scalar_t(0)) + cur[p] + (next ? next[p] : scalar_t(0));
            const scalar_t v = cur[p] * s1 + (win * third) * s2 + kc;
            o[p] = relu && v < scalar_t(0) ? scalar_t(0) : v;
          }
        }
      }
    });
  });
  return out;
}

// returns (gy, gscale (B, T, C), gshift (B, T, C), gparams (4, C): gw1, gb1, gw2, gb2)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tpool_ln_backward(
    const at::Tensor& gz, const at::Tensor& y, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, double eps1, double eps2) {
  check_y(y);
  check_like(gz, y, "the output gradient");
  at::Tensor s = opt(scale), h = opt(shift);
  check_affine(s, h, y);
  for (const auto& v : {w1, b1, w2, b2}) check_vec(v, y);
  const int64_t B = y.size(0), T = y.size(1), C = y.size(3);
  at::Tensor gy = at::empty_like(y), gs = at::empty({B, T, C}, y.options()), gh = at::empty({B, T, C}, y.options());
  at::Tensor gp = at::empty({4, C}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_ln_backward", [&] {
    ln_backward_kernel<scalar_t>(Problem<scalar_t>(y, s, h), gz.const_data_ptr<scalar_t>(), w1.const_data_ptr<scalar_t>(),
                                 w2.const_data_ptr<scalar_t>(), static_cast<scalar_t>(eps1),
                                 static_cast<scalar_t>(eps2), gy.mutable_data_ptr<scalar_t>(),
                                 gs.mutable_data_ptr<scalar_t>(), gh.mutable_data_ptr<scalar_t>(),
                                 gp.mutable_data_ptr<scalar_t>());
  });
  return {gy, gs, gh, gp};
}

// returns (4, C) float64: mean and biased variance of z, then of the pooled z
at::Tensor tpool_bn_stats(const at::Tensor& y, const c10::optional<at::Tensor>& scale,
                          const c10::optional<at::Tensor>& shift) {
  check_y(y);
  at::Tensor s = opt(scale), h = opt(shift);
  check_affine(s, h, y);
  at::Tensor stats = at::empty({4, y.size(3)}, y.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_bn_stats", [&] {
    bn_stats_kernel<scalar_t>(Problem<scalar_t>(y, s, h), stats.mutable_data_ptr<double>());
  });
  return stats;
}

// norm: (6, C) of y's dtype: mean1, rstd1, w1, mean2, rstd2, w2. Returns (gy, gscale, gshift, gparams (4, C)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tpool_bn_backward(
    const at::Tensor& gz, const at::Tensor& y, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, const at::Tensor& norm) {
  check_y(y);
  check_like(gz, y, "the output gradient");
  at::Tensor s = opt(scale), h = opt(shift);
  check_affine(s, h, y);
  const int64_t B = y.size(0), T = y.size(1), C = y.size(3);
  TORCH_CHECK(norm.dim() == 2 && norm.size(0) == 6 && norm.size(1) == C && norm.is_contiguous() &&
                  norm.scalar_type() == y.scalar_type() && norm.device().is_cpu(),
              "tpool: norm must be a contiguous (6, C) CPU tensor of y's dtype");
  at::Tensor gy = at::empty_like(y), gs = at::empty({B, T, C}, y.options()), gh = at::empty({B, T, C}, y.options());
  at::Tensor gp = at::empty({4, C}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "tpool_bn_backward", [&] {
    bn_backward_kernel<scalar_t>(Problem<scalar_t>(y, s, h), gz.const_data_ptr<scalar_t>(),
                                 norm.const_data_ptr<scalar_t>(), gy.mutable_data_ptr<scalar_t>(),
                                 gs.mutable_data_ptr<scalar_t>(), gh.mutable_data_ptr<scalar_t>(),
                                 gp.mutable_data_ptr<scalar_t>());
  });
  return {gy, gs, gh, gp};
}

}  // namespace

TORCH_LIBRARY(tada_native, m) {
  m.def("tpool_infer(Tensor y, Tensor? scale, Tensor? shift, Tensor w1, Tensor b1, Tensor w2, Tensor b2, bool ln, "
        "float eps1, float eps2) -> Tensor");
  m.def("tpool_ln_backward(Tensor gz, Tensor y, Tensor? scale, Tensor? shift, Tensor w1, Tensor b1, Tensor w2, "
        "Tensor b2, float eps1, float eps2) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("tpool_bn_stats(Tensor y, Tensor? scale, Tensor? shift) -> Tensor");
  m.def("tpool_frozen_frames(Tensor y, int frames, Tensor a1, Tensor a2, Tensor k, bool relu) -> Tensor");
  m.def("tpool_bn_backward(Tensor gz, Tensor y, Tensor? scale, Tensor? shift, Tensor norm) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tada_native, CPU, m) {
  m.impl("tpool_infer", tpool_infer);
  m.impl("tpool_ln_backward", tpool_ln_backward);
  m.impl("tpool_bn_stats", tpool_bn_stats);
  m.impl("tpool_frozen_frames", tpool_frozen_frames);
  m.impl("tpool_bn_backward", tpool_bn_backward);
}
