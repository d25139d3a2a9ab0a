"""tada_conv2d: fast, grouped and a naive per-frame loop agree exactly (float64), values and gradients."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from tada.nn.functional import tada_conv2d

B, T, H, W = 2, 3, 7, 6


def naive_tada_conv2d(x, weight, alpha, bias, stride, padding, dilation, groups, cal_dim, bias_alpha):
    """Per-(b, t) kernels built element by element from the definition W_t = alpha_t * W."""
    c_out, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // groups
    # input channel that weight[o, j] reads
    in_ch = torch.tensor([[(o // c_out_g) * c_in_g + j for j in range(c_in_g)] for o in range(c_out)])
    frames = []
    for b in range(x.shape[0]):
        per_t = []
        for t in range(x.shape[2]):
            w = weight
            if cal_dim in ("cin", "cin_cout"):
                a_in = alpha[0] if cal_dim == "cin_cout" else alpha
                w = w * a_in[b, :, t][in_ch][:, :, None, None]
            if cal_dim in ("cout", "cin_cout"):
                a_out = alpha[1] if cal_dim == "cin_cout" else alpha
                w = w * a_out[b, :, t][:, None, None, None]
            if cal_dim == "k2":
                w = w * alpha[b, :, t].reshape(1, 1, kh, kw)
            bt = None
            if bias is not None:
                bt = bias * bias_alpha[b, :, t] if bias_alpha is not None else bias
            y = F.conv2d(x[b, :, t][None], w, bt, stride, padding, dilation, groups)
            per_t.append(y[0])
        frames.append(torch.stack(per_t, dim=1))
    return torch.stack(frames, dim=0)


def random_alpha(shape, gen):
    # non-unit, varied calibrations (some negative) so every scaling path matters
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.7 + 1.0).requires_grad_()


def make_case(cal_dim, groups_kind, stride, dilation, padding, bias_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out = 4, 6
    if groups_kind == "depthwise":
        c_out, groups = c_in, c_in
    else:
        groups = groups_kind
    k = 3
    x = torch.randn(B, c_in, T, H, W, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(c_out, c_in // groups, k, k, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64).requires_grad_() if bias_kind != "none" else None
    if cal_dim == "cin":
        alpha = random_alpha((B, c_in, T), gen)
    elif cal_dim == "cout":
        alpha = random_alpha((B, c_out, T), gen)
    elif cal_dim == "k2":
        alpha = random_alpha((B, k * k, T), gen)
    else:
        alpha = (random_alpha((B, c_in, T), gen), random_alpha((B, c_out, T), gen))
    bias_alpha = random_alpha((B, c_out, T), gen) if bias_kind == "calibrated" else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, cal_dim=cal_dim)
    return x, weight, alpha, bias, bias_alpha, kwargs


def leaves(x, weight, alpha, bias, bias_alpha):
    out = [x, weight]
    out += list(alpha) if isinstance(alpha, tuple) else [alpha]
    out += [t for t in (bias, bias_alpha) if t is not None]
    return out


def value_and_grads(fn, inputs, gen_seed=1):
    y = fn()
    # a random cotangent, so gradients are not just sums
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=y.dtype)
    grads = torch.autograd.grad(y, inputs, grad_outputs=g)
    return y.detach(), grads


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


CASES = list(
    itertools.product(
        ["cin", "cout", "cin_cout", "k2"],
        [1, 2, "depthwise"],
        [1, 2],  # stride
        [1, 2],  # dilation
        [0, 1],  # padding
        ["none", "bias", "calibrated"],
    )
)


@pytest.mark.parametrize("cal_dim,groups,stride,dilation,padding,bias_kind", CASES)
def test_fast_grouped_naive_agree(cal_dim, groups, stride, dilation, padding, bias_kind):
    x, weight, alpha, bias, bias_alpha, kw = make_case(cal_dim, groups, stride, dilation, padding, bias_kind)
    inputs = leaves(x, weight, alpha, bias, bias_alpha)
    ref_y, ref_g = value_and_grads(
        lambda: naive_tada_conv2d(
            x, weight, alpha, bias, kw["stride"], kw["padding"], kw["dilation"], kw["groups"], cal_dim, bias_alpha
        ),
        inputs,
    )
    impls = ["grouped"] if cal_dim == "k2" else ["fast", "grouped"]
    impls.append("auto")
    for impl in impls:
        y, grads = value_and_grads(
            lambda: tada_conv2d(x, weight, alpha, bias, bias_alpha=bias_alpha, impl=impl, **kw), inputs
        )
        assert y.shape == ref_y.shape
        assert rel_err(y, ref_y) < 1e-10, impl
        for i, (g, rg) in enumerate(zip(grads, ref_g, strict=True)):
            assert rel_err(g, rg) < 1e-10, (impl, "grad of input", i)


def test_alpha_with_trailing_unit_dims_is_accepted():
    x, weight, alpha, bias, _, kw = make_case("cin", 1, 1, 1, 1, "bias")
    a = tada_conv2d(x, weight, alpha, bias, **kw)
    b = tada_conv2d(x, weight, alpha[..., None, None], bias, **kw)
    assert torch.equal(a, b)


def test_unit_alpha_is_the_per_frame_conv():
    x, weight, _, bias, _, kw = make_case("cout", 2, 1, 1, 1, "bias")
    ones = torch.ones(B, weight.shape[0], T, dtype=x.dtype)
    y = tada_conv2d(x, weight, ones, bias, **kw)
    frames = x.transpose(1, 2).reshape(B * T, *x.shape[1:2], H, W)
    ref = F.conv2d(frames, weight, bias, 1, 1, 1, 2)
    ref = ref.reshape(B, T, *ref.shape[1:]).transpose(1, 2)
    assert torch.allclose(y, ref, rtol=0, atol=1e-12)


def test_output_is_frame_major_and_chains_without_copy():
    x = torch.randn(B, 4, T, H, W)
    w = torch.randn(4, 4, 3, 3)
    a = torch.rand(B, 4, T) + 0.5
    y = tada_conv2d(x, w, a, padding=1)
    # stored as (B, T, C, H, W): folding frames into the batch is a view
    assert y.transpose(1, 2).is_contiguous()
    folded = y.transpose(1, 2).reshape(B * T, 4, H, W)
    assert folded.data_ptr() == y.data_ptr()


def test_float32_fast_matches_grouped():
    x, weight, alpha, bias, bias_alpha, kw = make_case("cin_cout", 2, 2, 1, 1, "calibrated")
    to32 = lambda t: t.detach().float()  # noqa: E731
    args = (to32(x), to32(weight), tuple(map(to32, alpha)), to32(bias))
    fast = tada_conv2d(*args, bias_alpha=to32(bias_alpha), impl="fast", **kw)
    grouped = tada_conv2d(*args, bias_alpha=to32(bias_alpha), impl="grouped", **kw)
    assert rel_err(fast, grouped) < 1e-5
