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
    ("optim.name=adamx", "not one of \\['sgd', 'adamw', 'adam'\\]"),
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


# -- value ranges: rejected at load, naming the key, not as a ZeroDivisionError in the trainer --------

@pytest.mark.parametrize("override,match", [
    ("train.eval_every=0", r"train\.eval_every=0: must be >= 1; .*default is train\.eval_every=1"),
    ("optim.accum_steps=0", r"optim\.accum_steps=0: must be >= 1"),
    ("optim.epochs=0", r"optim\.epochs=0: must be >= 1"),
    ("optim.epochs=-3", r"optim\.epochs=-3: must be >= 1"),
    ("optim.weight_decay=-1e-4", r"optim\.weight_decay=-0\.0001: must be >= 0"),
    ("optim.warmup_epochs=-1", r"optim\.warmup_epochs=-1\.0: must be >= 0"),
    ("optim.lr=-0.1", r"optim\.lr=-0\.1: must be >= 0"),
    ("optim.min_lr=0.5", r"optim\.min_lr=0\.5 is above optim\.lr=0\.1.*set optim\.min_lr <= optim\.lr"),
    ("data.batch_size=0", r"data\.batch_size=0: must be >= 1"),
    ("data.frames=0", r"data\.frames=0: must be >= 1"),
    ("data.num_workers=-1", r"data\.num_workers=-1: must be >= 0"),
    ("data.train_scale=[0.9, 0.5]", r"data\.train_scale=\[0\.9, 0\.5\]: must be two area fractions"),
    ("train.save_every=-1", r"train\.save_every=-1: must be >= 0"),
    ("train.log_every=0", r"train\.log_every=0: must be >= 1"),
    ("train.dist_timeout=0", r"train\.dist_timeout=0\.0: must be > 0"),
    ("train.stop_after_steps=0", r"train\.stop_after_steps=0: must be >= 1.*default is train\.stop_after_steps=null"),
    ("train.label_smoothing=1.0", r"train\.label_smoothing=1\.0: must be in \[0, 1\)"),
    ("train.ema_decay=1.0", r"train\.ema_decay=1\.0: must be in \(0, 1\)"),
    ("train.ema_decay=0", r"train\.ema_decay=0\.0: must be in \(0, 1\)"),
    ("model.num_classes=0", r"model\.num_classes=0: must be >= 1"),
    ("train.device=gpu", r"train\.device: 'gpu' is not one of \['auto', 'cpu', 'cuda'\]"),
    ("train.device=cuda:1", r"did you mean 'cuda'"),
    ("data.format=kinetic", r"data\.format: 'kinetic' is not one of .*did you mean 'kinetics'"),
])
def test_bad_ranges_fail_at_load(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_ranges_are_checked_wherever_a_config_is_built_and_edges_pass():
    with pytest.raises(ConfigError, match=r"train\.eval_every=0"):
        from_dict(Config, {"train": {"eval_every": 0}})
    cfg = load_config(None, ["train.save_every=0", "data.num_workers=0", "optim.warmup_epochs=0", "optim.lr=0.01",
                             "optim.min_lr=0.01", "optim.weight_decay=0", "train.stop_after_steps=1",
                             "train.ema_decay=0.9999", "train.label_smoothing=0", "data.train_scale=[1, 1]"])
    assert cfg.optim.min_lr == cfg.optim.lr and cfg.train.stop_after_steps == 1


def test_data_formats_match_the_parsers():
    import typing

    from tada.data.datasets import FORMATS
    from tada.engine.config import DataConfig

    assert set(typing.get_args(typing.get_type_hints(DataConfig)["format"])) == set(FORMATS)


def test_bad_base_and_missing_base_name_the_including_file(tmp_path):
    for bad in ("{a: 1}", "[base.yaml, 3]", "''"):
        (tmp_path / "top.yaml").write_text(f"_base_: {bad}\n")
        with pytest.raises(ConfigError, match=r"top\.yaml: _base_ must be a file name or a list of file names"):
            load_config(tmp_path / "top.yaml")
    (tmp_path / "mid.yaml").write_text("_base_: [nope.yaml]\n")
    (tmp_path / "top.yaml").write_text("_base_: mid.yaml\n")
    with pytest.raises(ConfigError, match=r"mid\.yaml: its _base_ 'nope\.yaml' was not found .*nope\.yaml"):
        load_config(tmp_path / "top.yaml")
    (tmp_path / "top.yaml").write_text("_base_:\nname: x\n")  # an empty _base_ is no base
    assert load_config(tmp_path / "top.yaml").name == "x"


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    for out in (tmp_path / "run", tmp_path / "run" / "sub"):
        with pytest.raises(ConfigError, match=r"train\.output_dir=.*run is a file, not a folder"):
            load_config(None, [f"train.output_dir={out}"])
    assert load_config(None, [f"train.output_dir={tmp_path / 'new' / 'run'}"])  # not there yet: fine
    with pytest.raises(ConfigError, match="train.output_dir is empty"):
        load_config(None, ["train.output_dir=''"])


def test_cuda_device_without_cuda_fails_at_load():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ConfigError, match=r"train\.device=cuda but .*no CUDA device.*use train\.device=cpu or "
                                          r"train\.device=auto"):
        load_config(None, ["train.device=cuda"])
    assert from_dict(Config, {"train": {"device": "cuda"}}).train.device == "cuda"  # a checkpoint's config reads back
