"""Checkpoint reading (formats, containers) and strict loading, on a tiny model defined here."""
import pytest
import torch
import torch.nn as nn

from tada.models import VideoClassifier, load_pretrained, read_checkpoint
from tada.models.pretrained import centre_inflate, unwrap_state_dict
from tada.nn import TAdaConv2d


class Tiny(VideoClassifier):
    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1))
        self.conv = TAdaConv2d(8, 8, 3, padding=1)
        self._init_head(8, num_classes)

    def forward_features(self, x):
        self.check_input(x)
        return self.conv(self.stem(x))


def _randomised(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def src():
    return _randomised(Tiny())


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("container", ["flat", "model_state", "state_dict", "module_prefix", "model_ema"])
def test_pickled_containers(tmp_path, src, container):
    sd = src.state_dict()
    obj = {
        "flat": sd,
        "model_state": {"epoch": 3, "model_state": sd, "optimizer_state": {"lr": 0.1}, "cfg": {"a": 1}},
        "state_dict": {"state_dict": sd, "epoch": 1},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "model_ema": {"model": sd, "model_ema": {}},
    }[container]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    dst = Tiny()
    report = load_pretrained(dst, path)
    assert _same(src, dst)
    assert report.loaded == len(sd) and not report.reinitialised_head


def test_safetensors_and_torchscript(tmp_path, src):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dst = Tiny()
    load_pretrained(dst, tmp_path / "w.safetensors")
    assert _same(src, dst)

    class Holder(nn.Module):  # a TorchScript archive holding the weights, like OpenAI CLIP's .pt files
        def __init__(self, sd):
            super().__init__()
            for i, (k, v) in enumerate(sd.items()):
                self.register_buffer(f"b{i}", v)

        def forward(self, x):
            return x

    sd = src.state_dict()
    torch.jit.save(torch.jit.script(Holder(sd)), str(tmp_path / "ts.pt"))
    back = read_checkpoint(tmp_path / "ts.pt")  # read as data, without torch.jit.load
    assert [torch.equal(a, b) for a, b in zip(back.values(), sd.values())] == [True] * len(sd)
    oracle = torch.jit.load(str(tmp_path / "ts.pt")).state_dict()  # a trusted file: jit.load is the reference
    assert list(back) == list(oracle)
    assert all(back[k].dtype == v.dtype and back[k].stride() == v.stride() and torch.equal(back[k], v)
               for k, v in oracle.items())


def test_head_with_other_class_count_is_reinitialised(tmp_path, src, caplog):
    torch.save(src.state_dict(), tmp_path / "c.pth")
    dst = Tiny(num_classes=9)
    head_before = dst.head.weight.clone()
    with caplog.at_level("WARNING", logger="tada.models"):
        report = load_pretrained(dst, tmp_path / "c.pth")
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "(head.bias, head.weight) has 4 classes and the model 9; it is re-initialised" in warning.getMessage()
    assert report.reinitialised_head == ["head.bias", "head.weight"]
    assert torch.equal(dst.head.weight, head_before)
    assert torch.equal(dst.stem.weight, src.stem.weight)
    assert "classifier re-initialised" in str(report)


def test_new_by_design_parameters_are_reported_not_required(tmp_path, src):
    sd = {k: v for k, v in src.state_dict().items() if ".routing." not in k}
    dst = Tiny()
    report = load_pretrained(dst, sd)
    assert report.new_by_design and all(".routing." in k for k in report.new_by_design)


@pytest.mark.parametrize("damage,match", [
    ("missing", "missing keys: stem.weight"),
    ("unexpected", "unexpected keys: extra.weight"),
    ("shape", r"shape mismatches: stem.weight: checkpoint \(8, 3, 1, 5, 5\)"),
])
def test_strict_and_all_or_nothing(tmp_path, src, damage, match):
    sd = dict(src.state_dict())
    if damage == "missing":
        del sd["stem.weight"]
    elif damage == "unexpected":
        sd["extra.weight"] = torch.zeros(2)
    else:
        sd["stem.weight"] = torch.zeros(8, 3, 1, 5, 5)
    dst = Tiny()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_pretrained(dst, sd)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_unreadable_files(tmp_path, src):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_checkpoint(tmp_path / "empty.pth")
    torch.save(src.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read .*text.pth: it is not a checkpoint \(its first bytes"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save(src.state_dict(), tmp_path / "named.safetensors")  # formats are found by content, not name
    assert read_checkpoint(tmp_path / "named.safetensors").keys() == src.state_dict().keys()
    with pytest.raises(ValueError, match="no tensors"):
        unwrap_state_dict({"epoch": 1, "cfg": {}})


def test_centre_inflate_sees_the_centre_frame_only():
    w = torch.randn(4, 3, 5, 5)
    w3 = centre_inflate(w, 3)
    x = torch.randn(1, 3, 6, 9, 9)
    y3 = torch.nn.functional.conv3d(x, w3, stride=(2, 1, 1), padding=(1, 0, 0))
    y2 = torch.stack([torch.nn.functional.conv2d(x[:, :, t], w) for t in (0, 2, 4)], 2)
    torch.testing.assert_close(y3, y2)


class CfgNode(dict):
    """Like the release's config object, pickled beside the weights."""


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/tada_payload_ran",))


def test_foreign_objects_beside_weights_are_not_imported_or_run(tmp_path, src):
    cfg = CfgNode(MODEL={"NAME": "x"})
    cfg.frozen = True
    torch.save({"epoch": 3, "model_state": src.state_dict(), "cfg": cfg}, tmp_path / "release.pyth")
    dst = Tiny()
    load_pretrained(dst, tmp_path / "release.pyth")
    assert _same(src, dst)

    import os

    if os.path.exists("/tmp/tada_payload_ran"):
        os.unlink("/tmp/tada_payload_ran")
    torch.save({"model_state": src.state_dict(), "cfg": Payload()}, tmp_path / "evil.pth")
    try:
        load_pretrained(Tiny(), tmp_path / "evil.pth")
    except ValueError:
        pass  # refusing is fine too; running the payload is not
    assert not os.path.exists("/tmp/tada_payload_ran")
