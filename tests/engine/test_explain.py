"""`tada explain`: the calibrations recorded are the ones the layers used (2D, 3D with temporal stride,
cin_cout with bias calibration, alpha given by the caller), exactly 1 at init, order-aware once the
routing is trained; the command end to end on a real decoded video; bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import tada
from tada.cli import main as tada_main
from tada.data.synth import write_video
from tada.engine.checkpoint import save_checkpoint
from tada.engine.config import Config, DataConfig, ModelConfig, to_dict
from tada.engine.explain import calibrations, main, plot_calibrations, select_layers
from tada.nn import TAdaConv2d, TAdaConv3d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["a", "b", "c"]


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, TAdaConv2d)}


def _randomise_routing(model, seed=0, std=0.5):
    """Random last routing convs (zero at init): alpha departs from 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in _convs(model).values():
            w = conv.routing.heads.b.weight
            w.copy_(torch.randn(w.shape, generator=g) * std)
    return model


@pytest.fixture
def mini(one_thread):
    torch.manual_seed(0)
    return tada.create_model("tada2d_r_mini", num_classes=4)


def test_fresh_model_calibrates_by_exactly_one(mini):
    clip = torch.randn(2, 3, 4, 32, 32)
    frozen = next(m for m in mini.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    alpha = calibrations(mini, clip)
    convs = _convs(mini)
    assert list(alpha) == list(convs) and len(alpha) == 4
    for name, a in alpha.items():
        assert a.shape == (2, convs[name].in_channels, 4) and a.dtype == torch.float32 and a.device.type == "cpu"
        assert torch.equal(a, torch.ones_like(a)), name  # exactly 1: zero-initialised routing
    assert mini.training and not frozen.training  # every module's mode is restored


def test_trained_routing_tells_a_clip_from_its_reversal(mini):
    clip = torch.randn(2, 3, 4, 32, 32)
    # zero routing weights (init): the reversed clip gets the flipped calibration, i.e. all ones both ways
    fwd, rev = calibrations(mini, clip), calibrations(mini, clip.flip(2))
    assert all(torch.equal(fwd[n], rev[n].flip(-1)) for n in fwd)
    _randomise_routing(mini)
    fwd, rev = calibrations(mini, clip), calibrations(mini, clip.flip(2))
    for name in fwd:
        assert (fwd[name] - 1).abs().max() > 1e-2, name
        # V1 routing: temporal convs over the frame descriptors, so order matters
        assert (fwd[name] - rev[name].flip(-1)).abs().max() > 1e-3, name


def test_recorded_alpha_is_the_one_the_layer_used(mini):
    _randomise_routing(mini, seed=1)
    mini.eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    seen = {}
    hooks = [conv.register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, (args[0], out)))
             for n, conv in _convs(mini).items()]
    try:
        alpha = calibrations(mini, clip)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for name, conv in _convs(mini).items():
            x, y = seen[name]
            torch.testing.assert_close(alpha[name], conv.routing(x), rtol=0, atol=0)
            torch.testing.assert_close(conv(x, alpha=alpha[name]), y, rtol=1e-6, atol=1e-6)


def test_tadaconv3d_alpha_is_per_output_frame():
    torch.manual_seed(0)
    layer = TAdaConv3d(4, 6, 3, stride=(2, 1, 1), padding=1)
    with torch.no_grad():
        layer.routing.heads.b.weight.normal_(std=0.5)
    model = nn.Sequential(layer).eval()  # the routing's BatchNorm with its running statistics, as calibrations runs it
    x = torch.randn(2, 4, 8, 6, 6)
    alpha = calibrations(model, x)["0"]
    assert alpha.shape == (2, 4, layer.output_frames(8)) == (2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(alpha, layer.calibration(x), rtol=0, atol=0)
        torch.testing.assert_close(layer(x, alpha=alpha), layer(x), rtol=1e-6, atol=1e-6)


def test_cin_cout_with_bias_calibration_gives_the_input_side_alpha():
    torch.manual_seed(0)
    layer = TAdaConv2d(4, 6, 3, padding=1, bias=True, cal_dim="cin_cout", bias_calibration=True)
    with torch.no_grad():
        for p in layer.routing.heads.parameters():
            p.normal_(std=0.5)
    x = torch.randn(1, 4, 5, 6, 6)
    alpha = calibrations(nn.Sequential(layer).eval(), x)["0"]
    with torch.no_grad():
        (a_in, _), _ = layer.routing(x)
    assert alpha.shape == (1, 4, 5)
    torch.testing.assert_close(alpha, a_in, rtol=0, atol=0)


class _GivenAlpha(nn.Module):
    """A caller that supplies the calibration itself (its layer's routing does not run)."""

    def __init__(self):
        super().__init__()
        self.conv = TAdaConv2d(3, 4, 1, routing=None)

    def forward(self, x):
        return self.conv(x, alpha=torch.full((x.shape[0], 3, x.shape[2]), 0.25))


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_alpha_given_by_the_caller_and_hooks_removed_on_error():
    alpha = calibrations(_GivenAlpha(), torch.randn(2, 3, 3, 4, 4))
    assert torch.equal(alpha["conv"], torch.full((2, 3, 3), 0.25))
    layer = TAdaConv2d(8, 8, 1)
    model = nn.Sequential(layer, _Boom())
    with pytest.raises(RuntimeError, match="boom"):
        calibrations(model, torch.randn(1, 8, 2, 4, 4))
    assert not layer._forward_hooks and not layer._forward_pre_hooks and not layer.routing._forward_hooks


def test_layer_selection_and_its_errors(mini):
    assert list(select_layers(mini, ["layer[23].*"])) == ["layer2.0.conv2", "layer3.0.conv2"]
    assert list(calibrations(mini, torch.randn(1, 3, 2, 32, 32), "layer4.0.conv2")) == ["layer4.0.conv2"]
    with pytest.raises(ValueError, match=r"unknown TAdaConv layer\(s\) \['layer9'\].*layer1.0.conv2, layer2.0.conv2"):
        select_layers(mini, ["layer1.0.conv2", "layer9"])
    with pytest.raises(ValueError, match="has no TAdaConv layer"):
        calibrations(tada.create_model("tsn_r_mini", num_classes=4), torch.randn(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        calibrations(mini, torch.randn(3, 2, 32, 32))


def test_plots_are_pngs(mini, tmp_path):
    _randomise_routing(mini)
    clip = torch.randn(1, 3, 4, 32, 32)
    paths = plot_calibrations(tmp_path, calibrations(mini, clip), calibrations(mini, clip.flip(2)))
    names = [f"alpha_{i:02d}_{n}.png" for i, n in enumerate(_convs(mini))]  # alpha_00_layer1.0.conv2.png, ...
    assert [p.rsplit("/", 1)[1] for p in paths] == names + ["calibration_depth.png"]
    for p in paths:
        assert Path(p).read_bytes()[:8] == PNG_MAGIC


# -- the command on a real video -----------------------------------------------------------------

def _moving(frames=12, h=40, w=48, seed=0):
    """A random texture sliding 3 px per frame: the clip and its reversal differ in motion direction."""
    base = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    return np.stack([np.roll(base, 3 * t, axis=1) for t in range(frames)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    write_video(root / "clip.mp4", _moving(), fps=25)
    data = DataConfig(frames=4, sampling="segment", crop_size=32, test_short_side=32, test_crop_size=32)
    for name in ("tada2d_r_mini", "tsn_r_mini"):
        torch.manual_seed(0)
        model = tada.create_model(name, num_classes=len(CLASSES))
        if name.startswith("tada"):
            _randomise_routing(model)
        cfg = Config(model=ModelConfig(name=name, drop_rate=0.0), data=data)
        save_checkpoint(root / f"{name}.pt", model=model, config=to_dict(cfg), class_names=CLASSES)
    return root


def test_explain_command_on_a_real_video(files, tmp_path, capsys, one_thread):
    out = tmp_path / "explain"
    rc = tada_main(["explain", str(files / "clip.mp4"), "--checkpoint", str(files / "tada2d_r_mini.pt"),
                    "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "4 TAdaConv layers" in printed and str(out / "calibrations.json") in printed
    report = json.loads((out / "calibrations.json").read_text())
    widths = {n: m.in_channels for n, m in _convs(tada.create_model("tada2d_r_mini", num_classes=3)).items()}
    assert len(widths) == 4
    assert list(report["layers"]) == list(widths)
    for name, s in report["layers"].items():
        assert s["shape"] == [1, widths[name], 4]  # one clip of the config's 4 frames
        assert s["mean_abs_dev"] > 0 and len(s["reversal_diff_per_frame"]) == 4
        assert s["reversal_max_diff"] == max(s["reversal_diff_per_frame"]) > 0
    assert report["view"]["frames"] == 4 and report["view"]["crop_size"] == 32
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5 and sorted(report["files"]) == sorted(map(str, pngs))
    for p in pngs:
        blob = p.read_bytes()
        assert len(blob) > 1000 and blob[:8] == PNG_MAGIC, p

    # --layers: only those; the default folder is beside the checkpoint
    assert main([str(files / "clip.mp4"), "--checkpoint", str(files / "tada2d_r_mini.pt"), "--layers", "layer4.*"]) == 0
    report = json.loads((files / "explain_clip" / "calibrations.json").read_text())
    assert list(report["layers"]) == ["layer4.0.conv2"]


def test_explain_bad_input(files, tmp_path, capsys):
    video, ckpt = str(files / "clip.mp4"), str(files / "tada2d_r_mini.pt")
    out = ["--out", str(tmp_path / "x")]
    cases = [
        ([str(tmp_path / "missing.mp4"), "--checkpoint", ckpt], "video not found"),
        ([video, "--checkpoint", str(tmp_path / "missing.pt")], "checkpoint not found"),
        ([video, "--checkpoint", str(files / "tsn_r_mini.pt")], "tsn_r_mini model, which has no TAdaConv layer"),
        ([video, "--checkpoint", ckpt, "--layers", "layer7.0.conv2"], "unknown TAdaConv layer(s) ['layer7.0.conv2']"),
    ]
    for args, message in cases:
        assert tada_main(["explain", *args, *out]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("tada explain: error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()  # nothing written for bad input
