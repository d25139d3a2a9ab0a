import random

import numpy as np
import pytest
import torch

from tada.engine.checkpoint import atomic_save, load_checkpoint, save_checkpoint, set_rng_state


def test_roundtrip_restores_everything(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    sched.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    p = save_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt, scheduler=sched, epoch=2, step=17,
                        config={"a": 1}, class_names=["x", "y", "z"])
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = load_checkpoint(p)  # weights_only=True inside
    assert state["epoch"] == 2 and state["step"] == 17 and state["class_names"] == ["x", "y", "z"]
    model2 = torch.nn.Linear(4, 3)
    model2.load_state_dict(state["model_state"])
    assert torch.equal(model2.weight, model.weight)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    opt2.load_state_dict(state["optimizer_state"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "last.pt"
    atomic_save({"v": torch.ones(1)}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"v": Boom()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.ones(1))
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "w.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"model_state": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
