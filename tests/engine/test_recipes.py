"""Every recipe in configs/ loads, type-checks, names a registered model whose options it accepts,
and carries the paper's numbers where SPEC §4 gives them."""
from pathlib import Path

import pytest
import torch

from tada.engine.config import load_config
from tada.models import create_model, is_model

ROOT = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p for p in ROOT.rglob("*.yaml") if p.name != "base.yaml")


def test_there_is_a_recipe_per_paper_setting():
    names = {str(p.relative_to(ROOT)) for p in RECIPES}
    for ds in ("k400", "ssv2"):
        for m in ("tada2d_r50", "tsn_r50", "tadaconvnextv2_tiny", "tadaconvnextv2_small", "tadaconvnextv2_base",
                  "tsn_convnext_tiny", "tsn_convnext_small", "tsn_convnext_base", "tadaformer_b16", "tadaformer_l14",
                  "tsn_vit_b16_clip", "tsn_vit_l14_clip"):
            assert any(n.startswith(f"{ds}/{m}") for n in names), (ds, m)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_loads_and_builds(path):
    cfg = load_config(path)
    if cfg.task.name == "localization":  # BMN on features: its options are BMN's arguments
        from tada.engine.tasks.localization import _options
        from tada.models import BMN

        o = _options(cfg)
        scale = o.temporal_scale if o.protocol == "rescale" else o.window
        BMN(in_channels=400, temporal_scale=scale, **dict(cfg.model.kwargs))  # (its sampling tables need a real device)
        assert cfg.model.name == "bmn" and cfg.train.output_dir.startswith("runs/")
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("adam", 1e-3, 1e-4, "step")
        return
    assert is_model(cfg.model.name), cfg.model.name
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    with torch.device("meta"):
        create_model(cfg.model.name, num_classes=cfg.model.num_classes or 10, **kwargs)
    assert cfg.train.output_dir.startswith("runs/")


def test_recipes_carry_the_papers_numbers():
    t = load_config(ROOT / "k400/tadaconvnextv2_tiny.yaml")
    assert (t.optim.name, t.optim.lr, t.optim.base_batch_size, t.optim.weight_decay) == ("adamw", 5e-4, 512, 0.02)
    assert (t.optim.epochs, t.optim.warmup_epochs, t.model.drop_path_rate, t.data.grayscale_p) == (100, 8, 0.2, 0.2)
    s = load_config(ROOT / "ssv2/tadaconvnextv2_small.yaml")
    assert (s.optim.epochs, s.optim.warmup_epochs, s.model.drop_path_rate, s.train.label_smoothing) == (64, 2.5, 0.5, 0.1)
    assert (s.data.sampling, s.data.flip_label_map, s.data.test_clips, s.data.test_crops) == ("segment", "ssv2", 2, 3)
    f = load_config(ROOT / "ssv2/tadaformer_b16.yaml")
    assert f.model.kwargs == {"temp_enhance": True, "double_tada": True} and f.optim.lr == 5e-4
    assert (f.optim.layer_decay, f.optim.new_param_lr_mult, f.train.ema_decay, f.data.normalize) == (0.7, 10, 0.9996, "clip")
    assert load_config(ROOT / "ssv2/tsn_vit_b16_clip.yaml").model.kwargs == {}
    assert load_config(ROOT / "k400/tadaformer_l14.yaml").optim.layer_decay == 0.85
    r = load_config(ROOT / "k400/tada2d_r50_8x8.yaml")
    assert (r.optim.name, r.optim.lr, r.optim.base_batch_size, r.data.short_side_range) == ("sgd", 0.24, 128, (224, 340))
    assert (r.data.frames, r.data.rate, r.data.test_clips, r.data.test_crops) == (8, 8, 4, 3)
