"""Checkpoints are data: TorchScript archives are read without torch.jit.load (exactly its state dict,
without running the archive's code), pickles never run their payloads, refusals say what the file is,
why and what to do, and a re-initialised classifier is announced by a warning."""
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from typing import Tuple

import pytest
import torch
import torch.nn as nn

import tada
from tada.cli import main
from tada.models import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

ADVICE = "torch.save(model.state_dict(), path)"


# payloads: under a plain pickle.load they would create the file `marker`
class _OsSystem:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec(_OsSystem):
    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# --------------------------------------------------------------------------------------------
# TorchScript archives: read as data, the same tensors as torch.jit.load(...).state_dict()
# --------------------------------------------------------------------------------------------
def _jit_state_dict(path):
    return torch.jit.load(str(path), map_location="cpu").state_dict()  # the oracle, on trusted files only


def _layout(t):
    return t.dtype, t.shape, t.stride(), t.storage_offset()


def _assert_same_tensors(ours, oracle):
    assert list(ours) == list(oracle)  # names, in the same order
    for k, v in oracle.items():
        assert _layout(ours[k]) == _layout(v) and torch.equal(ours[k], v), k
        assert not ours[k].requires_grad


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3, bias=False)  # a None parameter is no state-dict entry
        self.norm = nn.LayerNorm(3)
        self.register_buffer("count", torch.arange(5))  # int64
        self.register_buffer("keep", torch.tensor([True, False, True]))  # bool
        self.register_buffer("nothing", None)
        self.register_buffer("scratch", torch.ones(2), persistent=False)  # TorchScript lists it among buffers
        self.attn_mask = torch.full((3, 3), float("-inf")).triu(1)  # a plain tensor attribute, like CLIP's
        self.depth = 2

    def forward(self, x):
        return self.norm(self.proj(x)) + self.attn_mask.sum(0)


class _Dtypes(nn.Module):
    """Parameters and buffers of several dtypes, nested modules, containers and views sharing storages."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.seq = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
        self.scale = nn.Parameter(torch.randn(3, generator=g))
        base = torch.randn(6, 8, generator=g).half()
        self.register_buffer("half_t", base.t())  # non-contiguous
        self.register_buffer("half_cols", base[1:5, 2:7])  # an offset view of the same storage
        self.register_buffer("bf16", torch.randn(4, generator=g).bfloat16())
        self.register_buffer("f64", torch.randn(2, 2, generator=g).double()[:, 1])
        self.register_buffer("empty", torch.zeros(0, 3))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x * self.scale


def test_torchscript_archive_reads_as_jit_state_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.jit.save(torch.jit.script(_Dtypes().eval()), str(path))
    oracle = _jit_state_dict(path)
    assert {v.dtype for v in oracle.values()} >= {torch.float16, torch.float32, torch.int64, torch.bool}
    assert "blocks.0.attn_mask" not in oracle and "blocks.1.scratch" in oracle
    ours = read_checkpoint(path)
    _assert_same_tensors(ours, oracle)
    # views share one storage, as they do in the archive
    assert ours["half_t"].untyped_storage().data_ptr() == ours["half_cols"].untyped_storage().data_ptr()
    assert ours["half_cols"].storage_offset() == 10 and not ours["half_t"].is_contiguous()


def test_openai_layout_archive_reads_as_jit_state_dict(tmp_path):
    """The OpenAI CLIP layout of test_vit (visual tower, ln_final, scalar extras), on a small CLIP."""
    open_clip = pytest.importorskip("open_clip")
    from test_vit import _OpenAIJitLike

    torch.manual_seed(0)
    clip = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=1, layers=1),
    ).eval()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(_OpenAIJitLike(clip)), str(path))
    oracle = _jit_state_dict(path)
    assert "visual.proj" in oracle and "input_resolution" in oracle
    _assert_same_tensors(read_checkpoint(path), oracle)


# --------------------------------------------------------------------------------------------
# a crafted TorchScript archive: torch.jit.load would run its __setstate__, which writes a file
# --------------------------------------------------------------------------------------------
class _Evil(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2))
        self.marker = marker

    def forward(self, x):
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool, str]:
        return (self.weight, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool, str]) -> None:
        self.weight = state[0] + torch.from_file(state[2], shared=True, size=1)  # creates the file
        self.training = state[1]
        self.marker = state[2]


class _HidesEvil(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.stem = nn.Linear(2, 2)
        self.inner = _Evil(marker)

    def forward(self, x):
        return self.inner(self.stem(x))


def _crafted(tmp_path, where="root", name="resnet50.pth"):
    marker = tmp_path / f"ran_{where}_{name}"
    path = tmp_path / name
    module = _Evil(str(marker)) if where == "root" else _HidesEvil(str(marker))
    torch.jit.save(torch.jit.script(module), str(path))
    return path, marker


def test_crafted_archive_really_runs_code_under_jit_load(tmp_path):
    """The fixture is live: what tada refuses below, torch.jit.load executes."""
    path, marker = _crafted(tmp_path, name="oracle.pth")
    torch.jit.load(str(path))
    assert marker.exists()


@pytest.mark.parametrize("where", ["root", "submodule"])
def test_crafted_archive_is_refused_at_create_model_without_running(tmp_path, where):
    path, marker = _crafted(tmp_path, where)
    with pytest.raises(ValueError) as info:
        tada.create_model("tsn_r_mini", pretrained=path, num_classes=3)
    msg = str(info.value)
    assert str(path) in msg and "TorchScript archive" in msg and "__setstate__" in msg and ADVICE in msg
    assert not marker.exists()


def test_crafted_archive_is_refused_by_tada_train_without_running(tmp_path, capsys):
    path, marker = _crafted(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  name: tsn_r_mini\n  num_classes: 3\ntrain:\n  output_dir: {tmp_path / 'out'}\n")
    assert main(["train", str(cfg), f"model.pretrained={path}"]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and str(path) in err and "__setstate__" in err
    assert not marker.exists()


def test_archive_whose_pickle_calls_os_system_is_read_inertly(tmp_path):
    """A real archive with its data.pkl replaced by a payload: the global becomes an inert stand-in."""
    good, evil, marker = tmp_path / "good.pt", tmp_path / "resnet50.pth", tmp_path / "ran"
    torch.jit.save(torch.jit.script(_Block()), str(good))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for n in src.namelist():
            data = pickle.dumps(_OsSystem(marker), protocol=2) if n.endswith("/data.pkl") else src.read(n)
            dst.writestr(n, data)
    with pytest.raises(ValueError, match=r"root object is a posix.system, not a TorchScript module"):
        read_checkpoint(evil)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# torch.save pickles: payloads are refused or built inertly, never run
# --------------------------------------------------------------------------------------------
class _Config:  # a plain (non-dict) object pickled beside the weights
    def __init__(self):
        self.lr, self.layers = 0.1, [1, 2]


def _weights():
    return {"stem.weight": torch.randn(4, 3), "stem.bias": torch.arange(4.0)}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_objects_beside_weights_load_inertly(tmp_path, legacy):
    marker = tmp_path / "ran"
    sd = _weights()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "cfg": _Config(), "hook": _Exec(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    back = read_checkpoint(path)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["os_system", "exec"])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle_dump"])
def test_code_payloads_never_run(tmp_path, payload, fmt):
    marker = tmp_path / "ran"
    obj = (_OsSystem if payload == "os_system" else _Exec)(marker)
    path = tmp_path / "resnet50.pth"
    if fmt == "pickle_dump":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(ValueError) as info:  # no weights in it: refused either way
        read_checkpoint(path)
    assert not marker.exists()
    msg = str(info.value)
    assert str(path) in msg and ADVICE in msg
    if fmt == "pickle_dump":
        assert "plain pickle (pickle.dump, not torch.save), which is not unpickled here" in msg
    else:
        assert ("posix.system" in msg) if payload == "os_system" else ("builtins.exec" in msg)


# --------------------------------------------------------------------------------------------
# refusals: what the file is, why, what to do, in whole sentences
# --------------------------------------------------------------------------------------------
def _damaged(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        torch.save(_weights(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_legacy":
        torch.save(_weights(), path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "payload":
        torch.save({"model_state": _weights(), "cfg": _OsSystem(tmp_path / "ran")}, path)
    elif kind == "no_weights":
        torch.save({"epoch": 3, "cfg": {"lr": 0.1}}, path)
    return path


@pytest.mark.parametrize("kind,detected,why", [
    ("truncated", "damaged zip archive", "truncated"),
    ("truncated_legacy", "legacy torch.save pickle", "damaged or truncated"),
    ("random", "not a checkpoint", "first bytes"),
    ("payload", "pickle zip archive (torch.save)", "posix.system whose module posix is blocked"),
    ("no_weights", "pickle zip archive (torch.save)", "holds no tensors"),
])
def test_refusals_say_what_why_and_what_to_do(tmp_path, kind, detected, why):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"cannot read checkpoint {path}: it is ") and detected in msg and why in msg
    assert msg.endswith(ADVICE + ".") and "safetensors" in msg
    assert "\n" not in msg and ".." not in msg.replace("...", "")
    if kind == "payload":
        assert not (tmp_path / "ran").exists()
        assert "weights_only" not in msg  # torch's advice to load it with weights_only=False is not passed on


# --------------------------------------------------------------------------------------------
# a classifier with another class count: re-initialised with a visible warning
# --------------------------------------------------------------------------------------------
def test_reinitialised_head_is_a_warning(tmp_path, caplog):
    path = tmp_path / "k400.pth"
    torch.save(tada.create_model("tsn_r_mini", num_classes=4).state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="tada.models"):
        m = tada.create_model("tsn_r_mini", pretrained=path, num_classes=9)
    assert m.load_report.reinitialised_head == ["head.bias", "head.weight"]
    rec = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(rec) == 1
    text = rec[0].getMessage()
    assert "head.bias, head.weight" in text and "has 4 classes and the model 9" in text and str(path) in text


def test_reinitialised_head_warning_reaches_stderr_without_logging_configured(tmp_path):
    script = (
        "import sys, torch, tada\n"
        "torch.save(tada.create_model('tsn_r_mini', num_classes=4).state_dict(), sys.argv[1])\n"
        "tada.create_model('tsn_r_mini', pretrained=sys.argv[1], num_classes=9)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.pth")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "has 4 classes and the model 9; it is re-initialised" in r.stderr
