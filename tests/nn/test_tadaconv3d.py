"""TAdaConv3d: fast = grouped = a naive per-output-frame loop (float64, values and all gradients),
exact against nn.Conv3d at init, routing at the output frame rate, order sensitivity, errors."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tada.nn import RouteFuncMLP, TAdaConv3d, tada_conv3d
from tada.nn.functional3d import output_frame_centres, output_frames, sample_output_frames
from nn_testing import randomise  # tests/nn/nn_testing.py

B, T, H, W = 2, 7, 5, 6
F64 = torch.float64


def naive_tada_conv3d(x, weight, alpha, bias, beta, stride, padding, dilation, groups, cal_dim):
    """From the definition, one output frame at a time: build W_bt = alpha_bt * W, then sum the kt
    taps as 2D convolutions of the input frames s*t + d*tau - p that lie inside the clip."""
    (st, sh, sw), (pt, ph, pw), (dt, dh, dw) = stride, padding, dilation
    c_out, c_in_g, kt = weight.shape[:3]
    c_out_g = c_out // groups
    in_ch = torch.tensor([[(o // c_out_g) * c_in_g + j for j in range(c_in_g)] for o in range(c_out)])
    t_in = x.shape[2]
    t_out = (t_in + 2 * pt - dt * (kt - 1) - 1) // st + 1
    out = []
    for b in range(x.shape[0]):
        frames = []
        for t in range(t_out):
            if cal_dim == "cin":
                w = weight * alpha[b, :, t][in_ch][:, :, None, None, None]
            else:
                w = weight * alpha[b, :, t][:, None, None, None, None]
            y = 0
            for tau in range(kt):
                j = st * t + dt * tau - pt
                if 0 <= j < t_in:
                    y = y + F.conv2d(x[b:b + 1, :, j], w[:, :, tau], None, (sh, sw), (ph, pw), (dh, dw), groups)[0]
            if not torch.is_tensor(y):  # every tap in the zero padding
                h_out = (x.shape[3] + 2 * ph - dh * (weight.shape[3] - 1) - 1) // sh + 1
                w_out = (x.shape[4] + 2 * pw - dw * (weight.shape[4] - 1) - 1) // sw + 1
                y = x.new_zeros(c_out, h_out, w_out)
            if bias is not None:
                y = y + (bias * beta[b, :, t] if beta is not None else bias)[:, None, None]
            frames.append(y)
        out.append(torch.stack(frames, dim=1))
    return torch.stack(out)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def value_and_grads(fn, inputs, seed=1):
    y = fn()
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return y.detach(), torch.autograd.grad(y, inputs, grad_outputs=g)


SPATIAL = [((1, 1), (0, 1)), ((2, 1), (1, 0))]  # ((sh, sw), (ph, pw)), cycled over the cases
BIAS_KINDS = ["none", "bias", "calibrated"]


def make_case(cal_dim, groups_kind, kt, st, dt, pt, spatial, bias_kind, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out = 4, 6
    groups = c_in if groups_kind == "depthwise" else groups_kind
    if groups_kind == "depthwise":
        c_out = c_in
    (sh, sw), (ph, pw) = spatial
    stride, padding, dilation = (st, sh, sw), (pt, ph, pw), (dt, 1, 2 if kt == 3 else 1)
    t_out = output_frames(T, kt, st, pt, dt)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    alpha_ = lambda c: (rnd(B, c, t_out) * 0.7 + 1.0).requires_grad_()  # noqa: E731  (some negative)
    x = rnd(B, c_in, T, H, W).requires_grad_()
    weight = rnd(c_out, c_in // groups, kt, 3, 2).requires_grad_()
    alpha = alpha_(c_in if cal_dim == "cin" else c_out)
    bias = rnd(c_out).requires_grad_() if bias_kind != "none" else None
    beta = alpha_(c_out) if bias_kind == "calibrated" else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, cal_dim=cal_dim)
    return x, weight, alpha, bias, beta, kw


TEMPORAL = list(itertools.product([1, 3], [1, 2], [1, 2], [0, 1, 2]))  # kt, stride, dilation, padding
CASES = [
    (cal_dim, groups, *temporal, SPATIAL[i % 2], BIAS_KINDS[i % 3])
    for i, (cal_dim, groups, temporal) in enumerate(
        itertools.product(["cin", "cout"], [1, 2, "depthwise"], TEMPORAL)
    )
]


def _ids(case):
    cal, g, kt, st, dt, pt, sp, bk = case
    return f"{cal}-g{g}-k{kt}-s{st}-d{dt}-p{pt}-sp{sp[0][0]}{sp[1][0]}-{bk}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_fast_grouped_naive_agree_values_and_gradients(case):
    x, weight, alpha, bias, beta, kw = make_case(*case)
    leaves = zip(("x", "weight", "alpha", "bias", "beta"), (x, weight, alpha, bias, beta))
    named = [(n, t) for n, t in leaves if t is not None]
    names, inputs = [n for n, _ in named], [t for _, t in named]
    ref_y, ref_g = value_and_grads(lambda: naive_tada_conv3d(x, weight, alpha, bias, beta, **kw), inputs)
    assert ref_y.shape[2] == alpha.shape[2]
    for impl in ("fast", "grouped", "auto"):
        y, grads = value_and_grads(lambda: tada_conv3d(x, weight, alpha, bias, beta, impl=impl, **kw), inputs)
        assert y.shape == ref_y.shape, impl
        assert rel_err(y, ref_y) < 1e-10, impl
        for name, g, rg in zip(names, grads, ref_g, strict=True):
            assert rel_err(g, rg) < 1e-10, (impl, "grad", name)


@pytest.mark.parametrize("cal_dim", ["cin", "cout"])
def test_perturbation_control_the_comparison_can_fail(cal_dim):
    # the test above would catch an alpha applied to the wrong output frame, or a wrong tap order
    x, weight, alpha, bias, beta, kw = make_case(cal_dim, 2, 3, 2, 1, 1, SPATIAL[0], "calibrated")
    fast = tada_conv3d(x, weight, alpha, bias, beta, impl="fast", **kw).detach()
    ref = naive_tada_conv3d(x, weight, alpha, bias, beta, **kw).detach()
    assert rel_err(fast, ref) < 1e-10
    shifted = naive_tada_conv3d(x, weight, alpha.roll(1, dims=-1), bias, beta, **kw).detach()
    assert rel_err(fast, shifted) > 1e-2
    flipped = naive_tada_conv3d(x, weight.flip(2), alpha, bias, beta, **kw).detach()
    assert rel_err(fast, flipped) > 1e-2
    beta_shifted = naive_tada_conv3d(x, weight, alpha, bias, beta.roll(1, dims=-1), **kw).detach()
    assert rel_err(fast, beta_shifted) > 1e-3


def test_unit_alpha_is_conv3d():
    x, weight, _, bias, _, kw = make_case("cin", 2, 3, 2, 2, 2, SPATIAL[1], "bias")
    t_out = output_frames(T, 3, 2, 2, 2)
    ref = F.conv3d(x, weight, bias, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    for cal_dim, c in (("cin", x.shape[1]), ("cout", weight.shape[0])):
        ones = torch.ones(B, c, t_out, dtype=F64)
        kw["cal_dim"] = cal_dim
        for impl in ("fast", "grouped"):
            assert rel_err(tada_conv3d(x, weight, ones, bias, impl=impl, **kw), ref) < 1e-12


def test_alpha_with_trailing_unit_dims_is_accepted():
    x, weight, alpha, bias, _, kw = make_case("cin", 1, 3, 1, 1, 1, SPATIAL[0], "bias")
    a = tada_conv3d(x, weight, alpha, bias, **kw)
    assert torch.equal(a, tada_conv3d(x, weight, alpha[..., None, None], bias, **kw))


def test_float32_fast_matches_grouped():
    to32 = lambda t: None if t is None else t.detach().float()  # noqa: E731
    for cal_dim in ("cin", "cout"):
        x, weight, alpha, bias, beta, kw = make_case(cal_dim, 2, 3, 2, 1, 1, SPATIAL[1], "calibrated")
        args = [to32(t) for t in (x, weight, alpha, bias, beta)]
        assert rel_err(tada_conv3d(*args, impl="fast", **kw), tada_conv3d(*args, impl="grouped", **kw)) < 1e-5


def test_inference_path_equals_autograd_path():
    # without autograd the cin fast path skips its autograd.Function: same values
    for args in [(3, 1, 1, 1), (3, 2, 2, 2), (1, 2, 1, 0)]:
        x, weight, alpha, bias, beta, kw = make_case("cin", 2, *args, SPATIAL[1], "calibrated")
        with_grad = tada_conv3d(x, weight, alpha, bias, beta, **kw)
        with torch.no_grad():
            assert torch.equal(tada_conv3d(x, weight, alpha, bias, beta, **kw), with_grad.detach())


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "cin"], ids=[_ids(c) for c in CASES if c[0] == "cin"])
def test_inference_path_equals_grouped_on_the_grid(case):
    # without gradients the cin path builds Z a chunk of output frames at a time (T // kt frames per
    # chunk, so several chunks at kt = 3): every geometry of the grid still equals the grouped reference
    x, weight, alpha, bias, beta, kw = make_case(*case)
    with torch.no_grad():
        fast = tada_conv3d(x, weight, alpha, bias, beta, impl="fast", **kw)
        ref = tada_conv3d(x, weight, alpha, bias, beta, impl="grouped", **kw)
    assert rel_err(fast, ref) < 1e-12
    alpha2 = alpha.detach().clone()
    alpha2[0, 0, alpha2.shape[-1] // 2:] += 0.5  # control: the later chunks' calibrations matter
    with torch.no_grad():
        assert rel_err(tada_conv3d(x, weight, alpha2, bias, beta, impl="fast", **kw), ref) > 1e-6


def test_fast_path_saves_no_unfolded_input_for_backward():
    # autograd keeps x, weight and alpha (alive anyway) and no tensor the size of the unfolded input;
    # the grouped reference keeps its B*T_out kernels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 10, 10, generator=gen, requires_grad=True)
    weight = torch.randn(8, 8, 3, 3, 3, generator=gen, requires_grad=True)
    alpha = torch.randn(2, 8, 6, generator=gen, requires_grad=True)

    def saved(impl):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            tada_conv3d(x, weight, alpha, padding=1, impl=impl)
        return sizes

    assert max(saved("fast")) <= x.numel()
    assert sum(saved("fast")) <= x.numel() + weight.numel() + alpha.numel()
    assert sum(saved("grouped")) > 2 * 6 * weight.numel()


def test_bfloat16_autocast_runs_and_is_close():
    x, weight, alpha, bias, _, kw = make_case("cin", 1, 3, 2, 1, 1, SPATIAL[0], "bias")
    x, weight, alpha, bias = (t.detach().float().requires_grad_() for t in (x, weight, alpha, bias))
    ref = tada_conv3d(x, weight, alpha, bias, **kw)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, weight, alpha, bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tada_conv3d(x, weight, alpha, bias, **kw)
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().square().sum(), (x, weight, alpha, bias))
    assert rel_err(y.float(), ref) < 3e-2
    for g, rg, t in zip(grads, ref_grads, (x, weight, alpha, bias), strict=True):
        assert g.dtype == t.dtype and rel_err(g, rg) < 5e-2


# ---------------------------------------------------------------------------------------- module




# (conv, TAda kwargs)
LAYERS = {
    "dense-cin": (lambda: nn.Conv3d(16, 24, 3, padding=1, bias=False), dict(cal_dim="cin")),
    "dense-cin-strided": (lambda: nn.Conv3d(16, 16, 3, stride=2, padding=1, bias=True), dict(cal_dim="cin")),
    "temporal-311": (lambda: nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0), bias=False), dict(cal_dim="cin")),
    "depthwise-cout": (
        lambda: nn.Conv3d(16, 16, (3, 5, 5), padding=(1, 2, 2), groups=16, bias=True),
        dict(cal_dim="cout", bias_calibration=True),
    ),
    "kt1-strided-cout": (
        lambda: nn.Conv3d(16, 8, (1, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1)), dict(cal_dim="cout")
    ),
}
ROUTING = {"v1": dict(routing="v1"), "v2": dict(routing="v2", routing_kwargs=dict(head_dim=4))}
MB, MT, MH, MW = 2, 8, 9, 8


@pytest.mark.parametrize("routing", ["v1", "v2", "none"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_equals_conv3d_at_init(layer, routing):
    torch.manual_seed(0)
    make_conv, kw = LAYERS[layer]
    conv = make_conv()
    tada = TAdaConv3d.from_conv3d(conv, **({"routing": None} if routing == "none" else ROUTING[routing]), **kw)
    x = torch.randn(MB, 16, MT, MH, MW)
    ref = conv(x)
    if routing == "none":
        t_out = tada.output_frames(MT)
        c = 16 if kw["cal_dim"] == "cin" else conv.out_channels
        beta = torch.ones(MB, conv.out_channels, t_out) if kw.get("bias_calibration") else None
        out = tada(x, alpha=torch.ones(MB, c, t_out), beta=beta)
    else:
        out = tada(x)
    assert out.shape == ref.shape
    # equal up to float32 rounding (the cin fast path sums the taps in a different order than conv3d)
    assert rel_err(out, ref) < 1e-6
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_conv3d_state_dict_loads():
    conv = nn.Conv3d(8, 8, 3, padding=1, bias=True)
    tada = TAdaConv3d(8, 8, 3, padding=1, bias=True)
    missing, unexpected = tada.load_state_dict(conv.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("routing.") for k in missing)
    assert tada.weight.shape == conv.weight.shape and torch.equal(tada.weight, conv.weight)


def test_temporal_311_conv_is_a_tada_temporal_conv():
    # a TAda temporal (3,1,1) conv: T kept, each output frame's kernel calibrated, equal to the naive loop
    torch.manual_seed(0)
    tada = randomise(TAdaConv3d(8, 8, (3, 1, 1), padding=(1, 0, 0))).double().eval()
    x = torch.randn(2, 8, 6, 4, 4, dtype=F64)
    alpha = tada.calibration(x)
    assert alpha.shape == (2, 8, 6)
    ref = naive_tada_conv3d(x, tada.weight, alpha, None, None, (1, 1, 1), (1, 0, 0), (1, 1, 1), 1, "cin")
    with torch.no_grad():
        assert rel_err(tada(x), ref) < 1e-10
    assert rel_err(ref, F.conv3d(x, tada.weight, None, 1, (1, 0, 0))) > 1e-2  # the calibration matters


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("routing", list(ROUTING))
def test_module_fast_equals_grouped_with_routing(layer, routing):
    torch.manual_seed(0)
    make_conv, kw = LAYERS[layer]
    fast = randomise(TAdaConv3d.from_conv3d(make_conv(), impl="fast", **ROUTING[routing], **kw)).double().eval()
    grouped = TAdaConv3d.from_conv3d(make_conv(), impl="grouped", **ROUTING[routing], **kw).double().eval()
    grouped.load_state_dict(fast.state_dict())
    x = torch.randn(MB, 16, MT, MH, MW, dtype=F64)
    with torch.no_grad():
        assert rel_err(fast(x), grouped(x)) < 1e-10


def test_routing_gets_gradient_at_init():
    for routing in ROUTING.values():
        tada = TAdaConv3d(8, 8, 3, stride=(2, 1, 1), padding=1, **routing)
        tada(torch.randn(2, 8, 6, 5, 5)).square().sum().backward()
        assert tada.routing.heads.b.weight.grad.abs().sum() > 0


class FrameIndex(nn.Module):
    """A routing whose calibration of frame i is i: shows which input frames feed each output frame."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        b, _, t = x.shape[:3]
        return torch.arange(t, dtype=x.dtype).expand(b, self.channels, t)


@pytest.mark.parametrize(
    "kernel, stride, padding, expected",
    [
        (3, 1, 1, [0, 1, 2, 3, 4, 5, 6, 7]),  # "same": the identity
        (3, 2, 1, [0, 2, 4, 6]),  # strided: the frames the conv is centred on
        (1, 2, 0, [0, 2, 4, 6]),
        (3, 1, 0, [1, 2, 3, 4, 5, 6]),  # valid: the centre frames
        (2, 2, 0, [0.5, 2.5, 4.5, 6.5]),  # even kernel: the mean of the two centre frames
        (3, 1, 2, [0, 0, 1, 2, 3, 4, 5, 6, 7, 7]),  # more padding than the kernel needs: clamped
        (3, 3, 1, [0, 3, 6]),
    ],
)
def test_routing_is_brought_to_the_output_frame_rate(kernel, stride, padding, expected):
    tada = TAdaConv3d(4, 4, (kernel, 3, 3), stride=(stride, 1, 1), padding=(padding, 1, 1), routing=FrameIndex(4))
    x = torch.randn(2, 4, 8, 5, 5)
    alpha = tada.calibration(x)
    t_out = tada.output_frames(8)
    assert alpha.shape == (2, 4, t_out) == (2, 4, len(expected))
    assert alpha[0, 0].tolist() == expected
    assert tada(x).shape[2] == t_out == F.conv3d(x, tada.weight, None, tada.stride, tada.padding).shape[2]


@pytest.mark.parametrize("routing", list(ROUTING))
def test_strided_routing_gives_t_out_frames(routing):
    tada = TAdaConv3d(
        16, 16, 3, stride=2, padding=1, bias=True, cal_dim="cout", bias_calibration=True, **ROUTING[routing]
    )
    x = torch.randn(2, 16, 8, 6, 6)
    alpha, beta = tada.calibration(x)
    assert alpha.shape == beta.shape == (2, 16, 4)
    assert torch.equal(alpha, torch.ones_like(alpha)) and torch.equal(beta, torch.ones_like(beta))
    assert tada(x).shape == (2, 16, 4, 3, 3)


def test_sample_output_frames_keeps_ones_and_centres():
    ones = torch.ones(2, 3, 9)
    for args in [(3, 2, 1, 1), (2, 1, 0, 1), (3, 1, 0, 2), (4, 3, 2, 1)]:
        assert torch.equal(sample_output_frames(ones, *args), torch.ones(2, 3, output_frames(9, *args)))
    lo, hi = output_frame_centres(9, 3, 1, 0, 2)  # dilation 2: centres 2..6
    assert lo.tolist() == hi.tolist() == [2, 3, 4, 5, 6]


def time_reversal_gap(tada, x):
    """How far calibration(reverse(x)) is from reverse(calibration(x))."""
    tada.eval()
    with torch.no_grad():
        return (tada.calibration(x.flip(2)) - tada.calibration(x).flip(-1)).abs().max().item()


@pytest.mark.parametrize("routing", list(ROUTING))
def test_time_reversed_clip_gets_a_different_calibration(routing):
    x = torch.randn(2, 16, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    tada = TAdaConv3d(16, 16, 3, padding=1, **ROUTING[routing])
    assert time_reversal_gap(tada, x) == 0.0  # control: zero last layer, alpha == 1 whatever the order
    with torch.no_grad():
        tada.routing.heads.b.weight.normal_(0, 0.5)
    assert time_reversal_gap(tada, x) > 1e-2
    with torch.no_grad():  # and the output differs from the mirrored output
        assert (tada(x.flip(2)) - tada(x).flip(2)).abs().max() > 1e-3


def test_order_blind_routing_control():
    # temporal kernels of size 1 and no global term see no order: the gap vanishes, so the test above
    # measures a property of the routing and not an artefact of the comparison
    x = torch.randn(2, 16, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    tada = TAdaConv3d(16, 16, 3, padding=1, routing=randomise(RouteFuncMLP(16, kernels=(1, 1), global_context=False)))
    assert time_reversal_gap(tada, x) < 1e-5


def test_parameters_and_repr():
    tada = TAdaConv3d(64, 64, 3, padding=1, routing_kwargs=dict(global_context=False))
    # the Conv3d kernel plus the routing's two temporal convs (as Table 1 counts, biases excluded)
    n = sum(p.numel() for p in tada.parameters() if p.dim() > 1)
    assert n == 64 * 64 * 27 + 64 * 16 * 3 + 16 * 64 * 3
    assert "cal_dim='cin'" in repr(tada) and "kernel_size=(3, 3, 3)" in repr(tada)


def _x():
    return torch.randn(2, 4, 5, 6, 6)


def _w(*shape):
    return torch.randn(*(shape or (4, 4, 3, 3, 3)))


def _a(*shape):
    return torch.ones(*(shape or (2, 4, 3)))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: tada_conv3d(torch.randn(2, 4, 6, 6), _w(), _a()), ValueError, "B, C_in, T, H, W"),
        (lambda: tada_conv3d(_x(), _w(4, 4, 3, 3), _a()), ValueError, "Conv3d weight"),
        (lambda: tada_conv3d(_x(), _w(4, 3, 3, 3, 3), _a()), ValueError, "input channels"),
        (lambda: tada_conv3d(_x(), _w(), _a(2, 4, 5)), ValueError, r"alpha has shape \(2, 4, 5\).*OUTPUT frame"),
        (lambda: tada_conv3d(_x(), _w(), _a(2, 4, 5), stride=(2, 1, 1), padding=(1, 0, 0)), ValueError, r"\(2, 4, 3\)"),
        (lambda: tada_conv3d(_x(), _w(), _a(2, 4)), ValueError, "alpha must have shape"),
        (lambda: tada_conv3d(_x(), _w(), [[1.0]]), TypeError, "alpha must be a torch.Tensor"),
        (lambda: tada_conv3d(_x().numpy(), _w(), _a()), TypeError, "x must be a torch.Tensor"),
        (lambda: tada_conv3d(_x(), _w(), _a(), cal_dim="k2"), ValueError, "unknown cal_dim 'k2'"),
        (lambda: tada_conv3d(_x(), _w(), _a(), impl="cuda"), ValueError, "unknown impl"),
        (lambda: tada_conv3d(_x(), _w(), _a(), beta=_a()), ValueError, "bias is None"),
        (lambda: tada_conv3d(_x(), _w(), _a(), bias=_a(3)), ValueError, r"bias must have shape \(4,\)"),
        (lambda: tada_conv3d(_x(), _w(), _a(), bias=_a(4), beta=_a(2, 4, 2)), ValueError, "beta has shape"),
        (lambda: tada_conv3d(_x(), _w(), _a(), stride=(1, 1)), ValueError, "stride must be"),
        (lambda: tada_conv3d(_x(), _w(), _a(), padding="same"), ValueError, "zero padding only"),
        (lambda: tada_conv3d(_x(), _w(), _a(), dilation=0), ValueError, "dilation must be"),
        (lambda: tada_conv3d(_x(), _w(), _a(), groups=3), ValueError, "input channels"),
        (lambda: tada_conv3d(_x(), _w(4, 4, 7, 3, 3), _a()), ValueError, "too few"),
        (lambda: TAdaConv3d(8, 8, 3, cal_dim="cin_cout"), ValueError, "unknown cal_dim"),
        (lambda: TAdaConv3d(8, 8, 3, routing="v3"), ValueError, "unknown routing"),
        (lambda: TAdaConv3d(8, 8, 3, bias_calibration=True), ValueError, "bias=True"),
        (lambda: TAdaConv3d(8, 6, 3, groups=4), ValueError, "divisible by groups"),
        (lambda: TAdaConv3d(8, 8, (3, 3)), ValueError, "kernel_size must be"),
        (lambda: TAdaConv3d(8, 8, 3, routing="v2"), ValueError, "head_dim"),
        (lambda: TAdaConv3d(8, 8, 3, routing_kwargs=dict(out_channels=3)), ValueError, "may not set"),
        (lambda: TAdaConv3d(8, 8, 3, routing=None, routing_kwargs=dict(reduction=2)), ValueError, "only apply"),
        (lambda: TAdaConv3d(8, 8, 3)(torch.randn(2, 8, 9, 9)), ValueError, "B, C_in, T, H, W"),
        (lambda: TAdaConv3d(8, 8, 3)(torch.randn(2, 8, 2, 9, 9)), ValueError, "too few"),
        (lambda: TAdaConv3d(8, 8, 3, routing=None)(torch.randn(2, 8, 3, 9, 9)), ValueError, "pass alpha"),
        (lambda: TAdaConv3d.from_conv3d(nn.Conv2d(3, 3, 3)), TypeError, "nn.Conv3d"),
        (lambda: TAdaConv3d.from_conv3d(nn.Conv3d(3, 3, 3, padding_mode="reflect")), ValueError, "zero padding"),
        (lambda: TAdaConv3d.from_conv3d(nn.Conv3d(3, 3, 3, padding="same")), ValueError, "zero padding"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
