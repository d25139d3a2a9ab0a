"""The label space: what parsers return for one head or Epic-Kitchens' two, what the head and the
metrics read, and how checkpoints (new and old) store it."""
import pytest

from tada.data import LabelSpace, load_annotations
from tada.data.transforms import SSV2_FLIP_MAP


def test_single_and_verb_noun():
    one = LabelSpace.single(["a", "b", "c"])
    assert not one.multi_head and one.num_classes == 3 and one.sizes == (3,) and one.class_names == ["a", "b", "c"]
    assert one.fits(2) and not one.fits(3) and not one.fits(-1) and not one.fits((0, 1))
    assert one.name_of(1) == "b" and one.name_of(7) == "7"
    ek = LabelSpace.verb_noun(["take", "put"], ["cup", "knife", "pan"])
    assert ek.multi_head and ek.heads == ("verb", "noun") and ek.sizes == (2, 3) and ek.num_classes == 5
    assert ek.fits((1, 2)) and not ek.fits((2, 0)) and not ek.fits(1)
    assert ek.name_of((1, 2)) == "put/pan"
    with pytest.raises(ValueError, match="2 heads"):
        ek.class_names


def test_parsers_output_becomes_a_label_space(tmp_path):
    f = tmp_path / "k.txt"
    f.write_text("a.mp4 0\nb.mp4 2\n")
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    _, labels = load_annotations(f, "kinetics")
    assert labels == LabelSpace.single(["x", "y", "z"])
    assert LabelSpace.from_parser((["v1", "v2"], ["n1"])) == LabelSpace.verb_noun(["v1", "v2"], ["n1"])


def test_flip_pairs_and_json_round_trip():
    names = [f"c{i}" for i in range(174)]
    ssv2 = LabelSpace.single(names).with_flip_pairs(SSV2_FLIP_MAP)
    assert ssv2.flip_pairs == ((86, 87), (93, 94), (166, 167)) and ssv2.flip_map() == SSV2_FLIP_MAP
    assert LabelSpace.single(names[:90]).with_flip_pairs(SSV2_FLIP_MAP).flip_pairs == ((86, 87),)
    for space in (ssv2, LabelSpace.verb_noun(["a"], ["b", "c"])):
        assert LabelSpace.from_json(space.to_json()) == space
    # checkpoints written before label spaces stored the names (or [verbs, nouns]) only
    assert LabelSpace.from_json(["x", "y"]) == LabelSpace.single(["x", "y"])
    assert LabelSpace.from_json([["a"], ["b", "c"]]) == LabelSpace.verb_noun(["a"], ["b", "c"])
    with pytest.raises(ValueError, match="not two class ids below 3"):
        LabelSpace.single(["a", "b", "c"], flip_pairs=[(1, 5)])
