"""benchmarks/calibration_benchmark.py builds the network each row claims (the overrides take effect)."""
import importlib.util
from pathlib import Path

import pytest

import tada
from tada.engine.config import load_config
from tada.engine.demo import find_config_dir
from tada.nn import DynamicCalibration, LearnableCalibration, PartialCalibration, RouteFuncMLP, TAMCalibration, \
    TAdaConv2d

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("calibration_benchmark", ROOT / "benchmarks" / "calibration_benchmark.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

_KINDS = {"learnable": (LearnableCalibration, False), "learnable_t": (LearnableCalibration, True),
          "dynamic": (DynamicCalibration, False), "dynamic_t": (DynamicCalibration, True),
          "tam_global": (TAMCalibration, False), "tam_lg": (TAMCalibration, True), "tada": (RouteFuncMLP, True)}
#: id -> (routing class, temporal / local / global-context flag, init ones?)
EXPECT = {f"{k}_{init}": (cls, flag, init == "ones") for k, (cls, flag) in _KINDS.items() for init in ("ones", "random")}
EXPECT["tada_noglobal"] = (RouteFuncMLP, False, True)


def _model(run_id):
    _, _, _, cfg_file, extra, _ = bench.RUNS[run_id]
    cfg = load_config(find_config_dir() / cfg_file, ["data.root=/nonexistent"] + list(bench._NOAGG) + list(extra))
    return tada.create_model(cfg.model.name, num_classes=10, **cfg.model.kwargs)


@pytest.mark.parametrize("run_id", list(bench.RUNS))
def test_each_row_builds_the_network_it_names(run_id):
    m = _model(run_id)
    convs = [mod for mod in m.modules() if isinstance(mod, TAdaConv2d)]
    assert all(blk.agg is None for layer in m.stages for blk in layer)  # T-Pool off in every row
    if run_id == "none":
        assert convs == []
        return
    if run_id.startswith("stage"):
        assert m.tada_stages == (int(run_id[5:]),) and len(convs) == 1
        return
    assert len(convs) == 4
    if run_id.startswith("share"):
        assert all(isinstance(c.routing, PartialCalibration) for c in convs)
        assert m.cal_fraction == pytest.approx(1 / int(run_id[5:]))
        return
    cls, flag, ones = EXPECT[run_id]
    r = convs[0].routing
    assert isinstance(r, cls)
    if cls is RouteFuncMLP:
        assert r.global_context == flag
        assert (r.heads.b.weight.abs().sum() == 0) == ones
    else:
        assert (getattr(r, "temporal", None) if cls is not TAMCalibration else r.local) == flag
        assert r.init == ("ones" if ones else "random")


def test_every_generator_and_init_has_a_row():
    named = {(spec[1], spec[2]) for spec in bench.RUNS.values()}
    assert len(named) == len(bench.RUNS)
    assert {r for r in bench.RUNS if r.endswith("_random")} == {
        "learnable_random", "learnable_t_random", "dynamic_random", "dynamic_t_random", "tada_random",
        "tam_global_random", "tam_lg_random"}
