"""Class-name clean-up on the real UCF101 (CamelCase) and HMDB51 (underscores) class lists, prompt
templates and class-name files."""
import re
from pathlib import Path

import pytest

from tada.data.classnames import (DEFAULT_TEMPLATES, check_templates, clean_class_name, clean_class_names, prompts,
                                  read_class_names)
from tada.data.datasets import parse_hmdb51, parse_ucf101

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "classnames"
UCF = read_class_names(FIXTURES / "ucf101_classes.txt")
HMDB = read_class_names(FIXTURES / "hmdb51_classes.txt")
CAMEL = re.compile(r"[a-z][A-Z]")


def test_the_fixtures_are_the_official_lists():
    assert len(UCF) == 101 and len(set(UCF)) == 101 and UCF[0] == "ApplyEyeMakeup" and UCF[-1] == "YoYo"
    assert len(HMDB) == 51 and len(set(HMDB)) == 51 and HMDB == sorted(HMDB)
    # the project's own parsers read the same names from files laid out like the official ones
    assert sum(1 for n in UCF if CAMEL.search(n)) > 60 and all("_" in n or n.isalpha() for n in HMDB)


def test_ucf101_fixture_is_a_classind_the_parser_reads(tmp_path):
    (tmp_path / "classInd.txt").write_text((FIXTURES / "ucf101_classes.txt").read_text())
    (tmp_path / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    samples, names = parse_ucf101(tmp_path / "testlist01.txt")
    assert names == UCF and [s.label for s in samples] == [100, 0]


def test_hmdb51_fixture_names_are_what_the_split_files_give(tmp_path):
    for name in reversed(HMDB):
        (tmp_path / f"{name}_test_split1.txt").write_text(f"{name}_a.avi 2\n")
    samples, names = parse_hmdb51(tmp_path, split=1, subset="test")
    assert names == HMDB and len(samples) == 51


@pytest.mark.parametrize("raw, clean", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("brush_hair", "brush hair"), ("YoYo", "yo yo"),
    ("PlayingDaf", "playing daf"), ("HandstandPushups", "handstand pushups"), ("PushUps", "push ups"),
    ("CleanAndJerk", "clean and jerk"), ("TaiChi", "tai chi"), ("RockClimbingIndoor", "rock climbing indoor"),
    ("Skijet", "skijet"), ("Basketball", "basketball"), ("fall_floor", "fall floor"),
    ("swing_baseball", "swing baseball"), ("sword_exercise", "sword exercise"), ("kick", "kick"),
    # acronyms stay whole words, digits stay with their neighbours, words stay words
    ("BMXRiding", "bmx riding"), ("TVShow", "tv show"), ("3DPrinting", "3d printing"),
    ("tying knot (not on a tie)", "tying knot (not on a tie)"), ("massaging person's head", "massaging person's head"),
    ("  brush__hair ", "brush hair"),
])
def test_known_cases_are_exact(raw, clean):
    assert clean_class_name(raw) == clean


def test_lower_false_keeps_the_case():
    assert clean_class_name("BMXRiding", lower=False) == "BMX Riding"
    assert clean_class_name("ApplyEyeMakeup", lower=False) == "Apply Eye Makeup"


@pytest.mark.parametrize("names", [UCF, HMDB], ids=["ucf101", "hmdb51"])
def test_clean_up_on_every_real_class(names):
    cleaned = clean_class_names(names)
    assert len(cleaned) == len(names) and len(set(cleaned)) == len(names)  # still 101 / 51 distinct classes
    for raw, text in zip(names, cleaned):
        assert text and text == text.strip() and "  " not in text, raw
        assert "_" not in text and not CAMEL.search(text) and text == text.lower(), (raw, text)
        # nothing but spaces was added or removed: the letters are the original ones, in order
        assert text.replace(" ", "") == raw.replace("_", "").lower(), (raw, text)
        assert all(len(w) > 1 for w in text.split()), (raw, text)  # no word split into letters


def test_camel_case_split_count_on_ucf101():
    # a control: without clean-up, most UCF101 names are single CamelCase tokens
    words = [len(clean_class_name(n).split()) for n in UCF]
    assert sum(w > 1 for w in words) >= 70 and max(words) == 3
    assert sum(len(n.split()) > 1 for n in UCF) == 0


def test_bad_names():
    for bad in ("", "   ", "___"):
        with pytest.raises(ValueError, match="empty after clean-up"):
            clean_class_name(bad)
    with pytest.raises(ValueError, match="must be a string"):
        clean_class_name(3)
    with pytest.raises(ValueError, match="both become 'brush hair'"):
        clean_class_names(["brush_hair", "BrushHair"])


def test_prompts_and_templates():
    assert DEFAULT_TEMPLATES == ("a video of a person {}.", "{}")
    assert prompts("brush hair") == ["a video of a person brush hair.", "brush hair"]
    assert prompts("x", ["a {} b", "{{c}} {}"]) == ["a x b", "{{c}} x"]  # '{}' replaced literally
    assert prompts("a {} name", ["{}!"]) == ["a {} name!"]
    assert check_templates("{}") == ("{}",)
    for bad in ([], ["no slot"], ["{} twice {}"], [3]):
        with pytest.raises(ValueError, match="template"):
            check_templates(bad)


def test_read_class_names_files(tmp_path):
    (tmp_path / "a.txt").write_text("\ufeff# header\nbrush_hair\n\ncartwheel\n")
    assert read_class_names(tmp_path / "a.txt") == ["brush_hair", "cartwheel"]
    (tmp_path / "b.txt").write_text("2 Zeta\n1 Alpha\n")
    assert read_class_names(tmp_path / "b.txt") == ["Alpha", "Zeta"]
    (tmp_path / "c.txt").write_text("1 Alpha\n1 Beta\n")
    with pytest.raises(ValueError, match="twice"):
        read_class_names(tmp_path / "c.txt")
    (tmp_path / "d.txt").write_text("1 Alpha\n3 Beta\n")
    with pytest.raises(ValueError, match="without gaps"):
        read_class_names(tmp_path / "d.txt")
    (tmp_path / "e.txt").write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no class names"):
        read_class_names(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="class-name file not found"):
        read_class_names(tmp_path / "missing.txt")
