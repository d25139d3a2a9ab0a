import pytest

from tada.engine.config import Config, ConfigError, apply_overrides, from_dict, load_config, to_dict


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["optim.lr=0.05", "data.frames=16", "train.amp=bf16", "data.short_side_range=[224, 340]",
                             "model.kwargs.cal_dim=cout", "optim.clip_grad=null", "optim.warmup_epochs=2",
                             "optim.weight_decay=1e-4"])
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.optim.lr == 0.05 and cfg.data.frames == 16 and cfg.train.amp == "bf16"
    assert cfg.data.short_side_range == (224, 340)
    assert cfg.model.kwargs == {"cal_dim": "cout"}
    assert isinstance(cfg.optim.warmup_epochs, float)


def test_yaml_with_base(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  name: adamw\n  lr: 0.001\ndata:\n  frames: 8\n")
    (tmp_path / "top.yaml").write_text("_base_: base.yaml\nname: top\noptim:\n  lr: 0.002\n")
    cfg = load_config(tmp_path / "top.yaml", ["data.rate=4"])
    assert (cfg.name, cfg.optim.name, cfg.optim.lr, cfg.data.frames, cfg.data.rate) == ("top", "adamw", 0.002, 8, 4)
    assert from_dict(Config, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'lr'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("data.frames=8.5", "data.frames: expected an integer"),
    ("train.amp=bf17", "not one of .*did you mean 'bf16'"),
    ("optim.name=adam", "not one of \\['sgd', 'adamw'\\]"),
    ("data.short_side_range=[224]", "expected 2 values"),
    ("train.compile=yes please", "expected true or false"),
    ("optim.lr.x=1", "has no sub-key"),
    ("optimlr", "must look like key.sub=value"),
    ("modle.name=x", "did you mean 'model'"),
])
def test_bad_values_and_keys(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "typo.yaml").write_text("data:\n  frams: 8\n")
    with pytest.raises(ConfigError, match="data.frams.*did you mean 'frames'"):
        load_config(tmp_path / "typo.yaml")


def test_overrides_do_not_mutate_input():
    d = {"optim": {"lr": 1.0}}
    apply_overrides(d, ["optim.lr=2"])
    assert d == {"optim": {"lr": 1.0}}
