import pytest
import torch
import torch.nn as nn

from tada.engine.config import OptimConfig
from tada.engine.optim import build_optimizer, build_scheduler, param_groups
from tada.models import VideoClassifier, mark_new_by_design
from tada.nn import TAdaConv2d


class Net(VideoClassifier):
    def __init__(self):
        super().__init__()
        self.embed = nn.Parameter(torch.zeros(4, 8))
        self.stem = nn.Conv3d(3, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.tada = TAdaConv2d(8, 8, 3, padding=1)
        self.branch = mark_new_by_design(nn.Linear(8, 8))
        self._init_head(8, 5)

    def no_weight_decay(self):
        return {"embed"}

    def layer_groups(self):
        return [["embed", "stem.weight", "stem.bias"], self.norm, self.tada, self.branch]


def _group_of(groups, name):
    return next(g for g in groups if name in g["param_names"])


def test_groups_by_what_parameters_are():
    m = Net()
    groups = param_groups(m, weight_decay=0.05, new_param_lr_mult=10.0)
    assert _group_of(groups, "stem.weight")["weight_decay"] == 0.05
    for n in ("stem.bias", "norm.weight", "norm.bias", "embed", "head.bias"):
        assert _group_of(groups, n)["weight_decay"] == 0.0, n
    for n in ("tada.routing.a.weight", "tada.routing.heads.b.weight", "branch.weight", "head.weight"):
        assert _group_of(groups, n)["lr_scale"] == 10.0, n
    for n in ("stem.weight", "tada.weight", "norm.weight"):
        assert _group_of(groups, n)["lr_scale"] == 1.0, n
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_layer_decay():
    m = Net()
    groups = param_groups(m, weight_decay=0.0, layer_decay=0.5)
    assert _group_of(groups, "embed")["lr_scale"] == 0.5 ** 3
    assert _group_of(groups, "norm.weight")["lr_scale"] == 0.5 ** 2
    assert _group_of(groups, "tada.weight")["lr_scale"] == 0.5
    assert _group_of(groups, "head.weight")["lr_scale"] == 1.0  # not in a group: top
    with pytest.raises(ValueError, match="layer_groups"):
        param_groups(nn.Linear(2, 2), weight_decay=0.0, layer_decay=0.5)


def test_warmup_then_cosine_per_iteration():
    m = Net()
    cfg = OptimConfig(name="adamw", lr=1e-3, epochs=2, warmup_epochs=0.5, warmup_start_lr=1e-6, min_lr=1e-5,
                      new_param_lr_mult=10.0)
    opt = build_optimizer(m, cfg, cfg.lr)
    sched = build_scheduler(opt, cfg, iters_per_epoch=10)  # 5 warmup iterations, 15 cosine
    base = next(i for i, g in enumerate(opt.param_groups) if g["lr_scale"] == 1.0)
    new = next(i for i, g in enumerate(opt.param_groups) if g["lr_scale"] == 10.0)
    lrs = []
    for step in range(20):
        sched.step_update(step)
        lrs.append(opt.param_groups[base]["lr"])
        assert opt.param_groups[new]["lr"] == pytest.approx(10 * lrs[-1])
    assert lrs[0] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))  # warmup rises
    assert lrs[5] == pytest.approx(1e-3)  # peak after warmup
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # cosine falls
    sched.step_update(20)
    assert opt.param_groups[base]["lr"] == pytest.approx(1e-5)


def test_step_schedule_and_adam_with_l2_decay():
    # BMN's recipe: Adam (weight decay added to the gradient), lr x 0.1 from the start of epoch 7 of 9
    m = nn.Linear(3, 2)
    cfg = OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4, epochs=9, schedule="step", milestones=(7,), gamma=0.1)
    opt = build_optimizer(m, cfg, cfg.lr)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    sched = build_scheduler(opt, cfg, iters_per_epoch=4)
    lrs = []
    for step in range(36):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:28] == pytest.approx([1e-3] * 28)  # epochs 0..6
    assert lrs[28:] == pytest.approx([1e-4] * 8)  # epochs 7, 8
    wd = {g["weight_decay"] for g in opt.param_groups}
    assert wd == {0.0, 1e-4}  # the bias has none


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam"])
def test_the_fused_step_equals_the_per_tensor_loop(name):
    """build_optimizer takes PyTorch's fused step where the parameters allow it; over several steps with
    the paper's groups (decay / no decay, lr multipliers) it moves the weights as the per-tensor loop does."""
    from tada.engine.optim import fused_supported

    torch.manual_seed(0)
    ref, net = Net(), Net()
    with torch.no_grad():
        ref.embed.normal_()
    net.load_state_dict(ref.state_dict())
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=1e-2, momentum=0.9, new_param_lr_mult=10.0)
    assert fused_supported(net.parameters())
    opt = build_optimizer(net, cfg, cfg.lr)
    assert all(g.get("fused") for g in opt.param_groups)
    loop = build_optimizer(ref, cfg, cfg.lr)
    for g in loop.param_groups:
        g["fused"] = False
    params = {n: p for n, p in net.named_parameters()}
    for _ in range(4):
        x = torch.randn(5, 3)
        for m, o in ((net, opt), (ref, loop)):
            o.zero_grad()
            (m.norm(m.embed @ m.branch.weight) * x.mean()).square().mean().backward()
            o.step()
    moved = [n for n in start if not torch.equal(params[n], start[n])]
    assert {"embed", "branch.weight", "norm.weight"} <= set(moved)
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_fused_is_not_asked_for_parameters_it_cannot_take():
    from tada.engine.optim import fused_supported

    assert not fused_supported([torch.zeros(2, dtype=torch.int64)])
    assert not fused_supported([torch.zeros(2, device="meta")])
    assert fused_supported([torch.zeros(2), torch.zeros(3, dtype=torch.float64)])
