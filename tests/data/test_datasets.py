"""Annotation parsers (each on a fixture in its real format) and the robust clip dataset."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tada.data.datasets import (
    Sample,
    VideoClipDataset,
    collate_views,
    count_invalid,
    detect_format,
    load_annotations,
    parse_csv,
    parse_epic_kitchens,
    parse_folder,
    parse_hmdb51,
    parse_kinetics_csv,
    parse_kinetics_list,
    parse_ssv1,
    parse_ssv2,
    parse_timestamp,
    parse_ucf101,
)
from tada.data.synth import write_video


def pairs(samples):
    return [(s.path, s.label) for s in samples]


# --------------------------------------------------------------------------------------------------
# parsers


def test_kinetics_list(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("abseiling/a_000001_000011.mp4 0\n\n# comment\nair drumming/b c_000002_000012.mp4 2\n")
    samples, names = parse_kinetics_list(f)
    assert pairs(samples) == [("abseiling/a_000001_000011.mp4", 0), ("air drumming/b c_000002_000012.mp4", 2)]
    assert names == ["0", "1", "2"]  # class count from the data
    (tmp_path / "classes.txt").write_text("abseiling\nacting in play\nair drumming\nambidextrous\n")
    assert parse_kinetics_list(f)[1] == ["abseiling", "acting in play", "air drumming", "ambidextrous"]
    assert len(parse_kinetics_list(f, class_names=[f"c{i}" for i in range(710)])[1]) == 710
    with pytest.raises(ValueError, match="out of range"):
        parse_kinetics_list(f, class_names=["a", "b"])


@pytest.mark.parametrize("bad", ["videos/x.mp4", "videos/x.mp4 dog", "videos/x.mp4 -1"])
def test_kinetics_list_malformed(tmp_path, bad):
    f = tmp_path / "list.txt"
    f.write_text(f"a.mp4 0\nb.mp4 1\n{bad}\n")
    with pytest.raises(ValueError, match=r"list\.txt:3: .*expected '<relative/path.mp4> <integer label"):
        parse_kinetics_list(f)


KINETICS_CSV = """label,youtube_id,time_start,time_end,split
air drumming,--nQbRBEz2s,104,114,train
abseiling,-3B32lodo2M,59,69,train
air drumming,zzzzzz_x-9A,0,10,train
"""


@pytest.mark.parametrize("layout", ["flat", "class_folders", "underscored"])
def test_kinetics_official_csv(tmp_path, layout):
    f = tmp_path / "train.csv"
    f.write_text(KINETICS_CSV)
    root = tmp_path / "videos"
    files = {"--nQbRBEz2s_000104_000114.mp4": "air drumming", "-3B32lodo2M_000059_000069.mp4": "abseiling",
             "zzzzzz_x-9A_000000_000010.mp4": "air drumming"}
    for name, label in files.items():
        folder = {"flat": root, "class_folders": root / label, "underscored": root / label.replace(" ", "_")}[layout]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    samples, names = parse_kinetics_csv(f, root=root)
    assert names == ["abseiling", "air drumming"]  # ids by sorted class name
    prefix = {"flat": "", "class_folders": "{}/", "underscored": "{}/"}[layout]
    expected = []
    for name, label in files.items():
        folder = prefix.format(label if layout == "class_folders" else label.replace(" ", "_"))
        expected.append((folder + name, names.index(label)))
    assert pairs(samples) == expected
    assert samples[0].meta == {"youtube_id": "--nQbRBEz2s", "time_start": 104, "time_end": 114, "split": "train"}
    # A shared class list keeps ids stable across splits.
    assert parse_kinetics_csv(f, root=root, class_names=["zumba", "air drumming", "abseiling"])[0][1].label == 0


def test_kinetics_csv_malformed(tmp_path):
    f = tmp_path / "val.csv"
    f.write_text(KINETICS_CSV + "abseiling,abc,sixty,70,val\n")
    with pytest.raises(ValueError, match=r"val\.csv:5: .*integer times"):
        parse_kinetics_csv(f)
    f.write_text("youtube_id,label\nabc,abseiling\n")
    with pytest.raises(ValueError, match=r"val\.csv:1: .*header"):
        parse_kinetics_csv(f)


def _write_ssv2(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({
        "Approaching something with your camera": "0",
        "Moving something and something closer to each other": "1",
        "Putting something on a surface": "2",
    }))
    train = [
        {"id": "78687", "label": "putting a pen on a surface", "template": "Putting [something] on a surface",
         "placeholders": ["a pen"]},
        {"id": "42326", "label": "moving a cup and a plate closer to each other",
         "template": "Moving [something] and [something] closer to each other", "placeholders": ["a cup", "a plate"]},
        {"id": "100", "label": "approaching a door with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a door"]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(train))
    return tmp_path / "train.json"


def test_ssv2(tmp_path):
    samples, names = parse_ssv2(_write_ssv2(tmp_path))
    assert pairs(samples) == [("78687.webm", 2), ("42326.webm", 1), ("100.webm", 0)]
    assert names[2] == "Putting something on a surface" and len(names) == 3
    assert samples[1].meta["placeholders"] == ["a cup", "a plate"]
    (tmp_path / "test.json").write_text(json.dumps([{"id": "5"}]))  # the unlabelled test set
    assert pairs(parse_ssv2(tmp_path / "test.json")[0]) == [("5.webm", -1)]


def test_ssv2_malformed(tmp_path):
    f = _write_ssv2(tmp_path)
    f.write_text(json.dumps([{"id": "1", "template": "Putting [something] on a surface"},
                             {"id": "2", "template": "Juggling [something]"}]))
    with pytest.raises(ValueError, match=r"train\.json: entry 1: template 'Juggling \[something\]'"):
        parse_ssv2(f)
    f.write_text('[{"id": "1",\n "template": ]')
    with pytest.raises(ValueError, match=r"train\.json:2: invalid JSON"):
        parse_ssv2(f)


def _write_ssv1(tmp_path):
    (tmp_path / "something-something-v1-labels.csv").write_text(
        "Holding something\nMoving something down\nPushing something from left to right\n")
    f = tmp_path / "something-something-v1-train.csv"
    f.write_text("100218;Pushing something from left to right\n24;Holding something\n")
    return f


def test_ssv1_with_frame_folders(tmp_path, h):
    from PIL import Image

    f = _write_ssv1(tmp_path)
    samples, names = parse_ssv1(f)
    assert pairs(samples) == [("100218", 2), ("24", 0)]
    assert names == ["Holding something", "Moving something down", "Pushing something from left to right"]
    # The samples are frame folders {id}/00001.jpg; the dataset reads them.
    for vid in ("100218", "24"):
        (tmp_path / vid).mkdir()
        for k in range(12):
            Image.fromarray(h.index_frames(12, size=32, step=16)[k]).save(tmp_path / vid / f"{k + 1:05d}.jpg", quality=95)
    ds = VideoClipDataset(samples, root=tmp_path, frames=4, sampling="segment", train=False)
    item = ds[0]
    assert item["valid"] and item["label"] == 2 and item["video"].shape == (3, 4, 32, 32)
    assert h.decoded_index(item["video"], step=16) == [1, 4, 7, 10]  # segment centres of 12 frames


def test_ssv1_malformed(tmp_path):
    f = _write_ssv1(tmp_path)
    f.write_text("1;Holding something\n2 Holding something\n")
    with pytest.raises(ValueError, match=r"something-something-v1-train\.csv:2: .*'<id>;<class name>'"):
        parse_ssv1(f)
    f.write_text("1;Holding something\n2;Juggling\n")
    with pytest.raises(ValueError, match=r"train\.csv:2: .*class name listed in"):
        parse_ssv1(f)


EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
EPIC_ROWS = (
    'P01_01_0,P01,P01_01,00:00:00.000,00:00:00.50,00:00:01.50,30,90,open door,open,3,door,8,[\'door\'],[8]\n'
    'P01_01_1,P01,P01_01,00:00:01.089,00:00:01.00,00:00:01.90,60,114,"take cup, then plate",take,0,cup,13,'
    '"[\'cup\', \'plate\']","[13, 20]"\n'
)


def test_epic_kitchens(tmp_path):
    f = tmp_path / "EPIC_100_train.csv"
    f.write_text(EPIC_HEADER + EPIC_ROWS)
    samples, (verbs, nouns) = parse_epic_kitchens(f)
    assert pairs(samples) == [("P01/P01_01.MP4", (3, 8)), ("P01/P01_01.MP4", (0, 13))]
    assert (samples[0].start_sec, samples[0].end_sec) == (0.5, 1.5)
    assert samples[1].meta["narration"] == "take cup, then plate"
    assert verbs[3] == "open" and verbs[0] == "take" and nouns[13] == "cup" and len(nouns) == 14
    assert parse_timestamp("01:02:03.25") == pytest.approx(3723.25)
    # the videos/{video_id}.MP4 layout is detected from the files under root
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "P01_01.MP4").write_bytes(b"x")
    assert samples and parse_epic_kitchens(f, root=tmp_path)[0][0].path == "videos/P01_01.MP4"


def test_epic_kitchens_malformed(tmp_path):
    f = tmp_path / "EPIC_100_validation.csv"
    f.write_text(EPIC_HEADER + EPIC_ROWS + "P01_01_2,P01,P01_01,00:00:01,1.5s,00:00:02.00,1,2,x,x,1,y,2,[],[]\n")
    with pytest.raises(ValueError, match=r"EPIC_100_validation\.csv:4: .*HH:MM:SS\.ff"):
        parse_epic_kitchens(f)


def test_epic_clip_frames_lie_inside_the_range(tmp_path, h):
    """Frames of the clip come from [start, stop] (converted with the probed fps), in train and test."""
    (tmp_path / "P01").mkdir()
    write_video(tmp_path / "P01" / "P01_01.MP4", h.index_frames(60), fps=30)  # frame k has level 4k
    f = tmp_path / "EPIC_100_train.csv"
    f.write_text(EPIC_HEADER + EPIC_ROWS)
    samples, _ = parse_epic_kitchens(f)
    ranges = [(15, 45), (30, 57)]  # 0.5-1.5 s and 1.0-1.9 s at 30 fps
    for train in (True, False):
        for sampling, kw in (("segment", {}), ("interval", {"rate": 3})):
            ds = VideoClipDataset(samples, root=tmp_path, frames=6, sampling=sampling, train=train,
                                  num_clips=2, seed=0, **kw)
            for i in range(len(ds)):
                item = ds[i]
                lo, hi = ranges[item["index"]]
                assert item["label"] == [(3, 8), (0, 13)][item["index"]]
                idx = h.decoded_index(item["video"])
                assert all(lo <= k <= hi for k in idx), (sampling, train, idx, lo, hi)
                assert idx == sorted(idx) and len(set(idx)) > 1
    batch = collate_views([ds[0], ds[2]])
    assert batch["label"].tolist() == [[3, 8], [0, 13]]


def test_ucf101(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    (tmp_path / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c02.avi 3\n")
    (tmp_path / "testlist01.txt").write_text(
        "ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n")
    samples, names = parse_ucf101(tmp_path / "trainlist01.txt")
    assert pairs(samples) == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0), ("Archery/v_Archery_g08_c02.avi", 2)]
    assert names == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    samples, _ = parse_ucf101(tmp_path / "testlist01.txt")
    assert pairs(samples) == [("ApplyLipstick/v_ApplyLipstick_g01_c01.avi", 1), ("Archery/v_Archery_g01_c01.avi", 2)]
    (tmp_path / "testlist02.txt").write_text("Archery/v_Archery_g01_c01.avi\nBowling/v_Bowling_g01_c01.avi\n")
    with pytest.raises(ValueError, match=r"testlist02\.txt:2: .*Class/video\.avi"):
        parse_ucf101(tmp_path / "testlist02.txt")


def test_hmdb51(tmp_path):
    (tmp_path / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \nx.avi 0 \n")
    (tmp_path / "cartwheel_test_split1.txt").write_text("c1.avi 2\nc2.avi 1\n")
    (tmp_path / "cartwheel_test_split2.txt").write_text("c1.avi 1\nc2.avi 1\n")
    train, names = parse_hmdb51(tmp_path, split=1, subset="train")
    assert names == ["brush_hair", "cartwheel"]
    assert pairs(train) == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0), ("cartwheel/c2.avi", 1)]
    test, _ = parse_hmdb51(tmp_path / "cartwheel_test_split1.txt", subset="test")  # a split file names its split
    assert pairs(test) == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 0), ("cartwheel/c1.avi", 1)]
    (tmp_path / "cartwheel_test_split1.txt").write_text("c1.avi 2\nc2.avi 3\n")
    with pytest.raises(ValueError, match=r"cartwheel_test_split1\.txt:2: .*<0\|1\|2>"):
        parse_hmdb51(tmp_path)


def test_generic_csv_and_folder(tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("path,label\nclips/a.mp4,3\nclips/b.mp4,0\n")
    samples, names = parse_csv(f)
    assert pairs(samples) == [("clips/a.mp4", 3), ("clips/b.mp4", 0)] and len(names) == 4
    f.write_text("clips/a.mp4,jump\nclips/b.mp4,bow\nclips/c.mp4,jump\n")
    samples, names = parse_csv(f)
    assert names == ["bow", "jump"] and pairs(samples) == [("clips/a.mp4", 1), ("clips/b.mp4", 0), ("clips/c.mp4", 1)]
    f.write_text("clips/a.mp4,jump\nclips/b.mp4\n")
    with pytest.raises(ValueError, match=r"list\.csv:2: .*'<path>,<label>'"):
        parse_csv(f)

    for cls, n in (("walk", 2), ("run", 1)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "data" / cls / f"v{i}.mp4").write_bytes(b"x")
    (tmp_path / "data" / "walk" / "notes.txt").write_text("not a video")
    samples, names = parse_folder(tmp_path / "data")
    assert names == ["run", "walk"]
    assert pairs(samples) == [("run/v0.mp4", 0), ("walk/v0.mp4", 1), ("walk/v1.mp4", 1)]


def test_detect_format_and_load(tmp_path):
    _write_ssv2(tmp_path)
    _write_ssv1(tmp_path)
    (tmp_path / "k.txt").write_text("a/b.mp4 0\n")
    (tmp_path / "k.csv").write_text(KINETICS_CSV)
    (tmp_path / "EPIC_100_train.csv").write_text(EPIC_HEADER + EPIC_ROWS)
    (tmp_path / "ek.csv").write_text(EPIC_HEADER + EPIC_ROWS)
    (tmp_path / "trainlist01.txt").write_text("A/v.avi 1\n")
    (tmp_path / "g.csv").write_text("a.mp4,1\n")
    (tmp_path / "hmdb").mkdir()
    (tmp_path / "hmdb" / "run_test_split1.txt").write_text("a.avi 1\n")
    (tmp_path / "folder" / "walk").mkdir(parents=True)
    expected = {"train.json": "ssv2", "something-something-v1-train.csv": "ssv1", "k.txt": "kinetics",
                "k.csv": "kinetics_csv", "EPIC_100_train.csv": "epic", "ek.csv": "epic", "trainlist01.txt": "ucf101",
                "g.csv": "csv", "hmdb": "hmdb51", "hmdb/run_test_split1.txt": "hmdb51", "folder": "folder"}
    assert {k: detect_format(tmp_path / k) for k in expected} == expected
    samples, names = load_annotations(tmp_path / "k.csv")
    assert names.class_names == ["abseiling", "air drumming"] and samples[1].label == 0
    with pytest.raises(ValueError, match="unknown annotation format"):
        load_annotations(tmp_path / "k.txt", "kinetics900")


# --------------------------------------------------------------------------------------------------
# unusable lists fail when they are read, saying which file and what is wrong


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"# videos go here\n\n"])
@pytest.mark.parametrize("fmt", [None, "kinetics", "csv"])
def test_empty_list(tmp_path, content, fmt):
    f = tmp_path / "train.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=r"train\.txt: (the annotation list is empty|no samples in this)"):
        load_annotations(f, fmt)


def test_empty_csv_with_only_a_header(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(ValueError, match=r"k\.csv: no samples in this kinetics_csv annotation list"):
        load_annotations(tmp_path / "k.csv")


@pytest.mark.parametrize("fmt", [None, "kinetics"])
def test_list_that_is_not_utf8_names_line_and_offset(tmp_path, fmt):
    f = tmp_path / "train.txt"
    f.write_bytes("a.mp4 0\ncafé/b.mp4 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.txt:2: byte b'\\xe9' at offset 11 is not UTF-8.*iconv"):
        load_annotations(f, fmt)
    f.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)))  # an mp4 passed as the list
    with pytest.raises(ValueError, match=r"train\.txt:1: byte b'\\x00' at offset 0: a binary"):
        load_annotations(f, fmt)


def test_non_utf8_in_every_reader(tmp_path):
    latin = "clips/é.mp4,0\n".encode("latin-1")
    (tmp_path / "list.csv").write_bytes(latin)
    with pytest.raises(ValueError, match=r"list\.csv:1: .*not UTF-8"):
        parse_csv(tmp_path / "list.csv")
    (tmp_path / "EPIC_100_train.csv").write_bytes(EPIC_HEADER.encode() + latin)
    with pytest.raises(ValueError, match=r"EPIC_100_train\.csv:2: .*not UTF-8"):
        parse_epic_kitchens(tmp_path / "EPIC_100_train.csv")
    f = _write_ssv2(tmp_path)
    f.write_bytes(b'[{"id": "1", "template": "Caf\xe9"}]')
    with pytest.raises(ValueError, match=r"train\.json:1: .*not UTF-8"):
        parse_ssv2(f)
    (tmp_path / "classes.txt").write_bytes(b"walk\nd\xe9j\xe0 vu\n")
    (tmp_path / "k.txt").write_text("a.mp4 0\n")
    with pytest.raises(ValueError, match=r"classes\.txt:2: .*not UTF-8"):
        parse_kinetics_list(tmp_path / "k.txt", class_names=tmp_path / "classes.txt")


def test_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("path,label\nclips/a.mp4,1\nclips/b.mp4,0\n", encoding="utf-8-sig")
    assert pairs(parse_csv(f)[0]) == [("clips/a.mp4", 1), ("clips/b.mp4", 0)]


def test_missing_list(tmp_path):
    for fmt in (None, "kinetics", "ssv2", "epic"):
        with pytest.raises(FileNotFoundError, match=r"nope\.txt: no such annotation"):
            load_annotations(tmp_path / "nope.txt", fmt)
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        detect_format(tmp_path / "nope.txt")


def test_label_outside_the_class_names(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("a.mp4 0\nb.mp4 2\nc.mp4 99\nd.mp4 1\n")  # 99: a typo among 3 classes
    (tmp_path / "classes.txt").write_text("run\nwalk\njump\n")  # beside the list: used
    for fmt in (None, "kinetics"):
        with pytest.raises(ValueError, match=r"train\.txt:3: label 99 is out of range: .*classes\.txt has 3 class "
                                             r"names \(ids 0\.\.2\)"):
            load_annotations(f, fmt)
    with pytest.raises(ValueError, match=r"train\.txt:3: label 99 is out of range: class_names has 4"):
        parse_kinetics_list(f, class_names=["a", "b", "c", "d"])
    g = tmp_path / "list.csv"
    g.write_text("path,label\na.mp4,0\nb.mp4,3\n")
    with pytest.raises(ValueError, match=r"list\.csv:3: label 3 is out of range: .*classes\.txt has 3"):
        parse_csv(g)
    g.write_text("a.mp4,walk\nb.mp4,jump\n")  # names map by classes.txt order, not sorted
    assert [s.label for s in parse_csv(g)[0]] == [1, 2] and parse_csv(g)[1] == ["run", "walk", "jump"]
    (tmp_path / "classes.txt").write_text("abseiling\nzumba\n")
    (tmp_path / "k.csv").write_text(KINETICS_CSV)
    with pytest.raises(ValueError, match=r"k\.csv:2: class 'air drumming' is not among the 2 class names of "
                                         r".*classes\.txt"):
        parse_kinetics_csv(tmp_path / "k.csv")


def test_negative_labels_are_errors_without_class_names(tmp_path):
    g = tmp_path / "list.csv"
    g.write_text("a.mp4,0\nb.mp4,-1\nc.mp4,1\n")
    with pytest.raises(ValueError, match=r"list\.csv:2: .*expected a label >= 0.*'-1'"):
        parse_csv(g)
    f = tmp_path / "EPIC_100_train.csv"
    f.write_text(EPIC_HEADER + EPIC_ROWS.replace(",open,3,door,8,", ",open,-3,door,8,"))
    with pytest.raises(ValueError, match=r"EPIC_100_train\.csv:2: .*verb_class and noun_class >= 0"):
        parse_epic_kitchens(f)


def test_sparse_inferred_labels_are_logged(tmp_path, caplog):
    f = tmp_path / "train.txt"
    with caplog.at_level(logging.WARNING, logger="tada.data.datasets"):
        f.write_text("a.mp4 0\nb.mp4 2\nc.mp4 1\n")
        assert len(parse_kinetics_list(f)[1]) == 3 and not caplog.records
        f.write_text("a.mp4 0\nb.mp4 2\nc.mp4 99\nd.mp4 1\n")
        assert len(parse_kinetics_list(f)[1]) == 100  # still inferred, but said
    assert "labels run up to 99 but only 4 of the 100 ids occur" in caplog.text and "typo" in caplog.text


# --------------------------------------------------------------------------------------------------
# the dataset: bad files never end a run


def _mixed(video_dir, mixed_list, **kw):
    samples, _ = parse_kinetics_list(mixed_list)
    return samples, VideoClipDataset(samples, root=video_dir, frames=4, rate=2, **kw)


def test_train_replaces_bad_videos_and_logs_them(video_dir, mixed_list, caplog, h):
    samples, ds = _mixed(video_dir, mixed_list, train=True, seed=0)
    bad = {i for i, s in enumerate(samples) if s.path in h.BAD}
    assert len(bad) == 5 and len(ds) == len(samples)
    with caplog.at_level(logging.WARNING, logger="tada.data.datasets"):
        loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=0, collate_fn=collate_views)
        items = [(int(i), lab) for b in loader for i, lab in zip(b["index"], b["label"].tolist())]
        batches = list(loader)  # a second epoch
    assert len(items) == len(samples)
    assert all(samples[i].path in h.GOOD for i, _ in items)  # every item comes from a good file...
    assert all(samples[i].label == lab for i, lab in items)  # ...with that file's label
    assert {str(video_dir / p) for p in h.BAD} == set(ds.failures)  # counted, with reasons
    assert ds.failures[str(video_dir / "bad/missing.mp4")] == "file not found"
    assert "0 bytes" in ds.failures[str(video_dir / "bad/zero.mp4")]
    for p in h.BAD:
        assert any(p in r.getMessage() for r in caplog.records), p
    replaced = {j for b in batches for r in b["replaced"] for j in r}
    assert replaced == bad and all(b["valid"].all() for b in batches)


def test_train_with_worker_processes(video_dir, mixed_list, h):
    samples, ds = _mixed(video_dir, mixed_list, train=True)
    bad = {i for i, s in enumerate(samples) if s.path in h.BAD}
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate_views)
    batches = list(loader)
    indices = [int(i) for b in batches for i in b["index"]]
    assert len(indices) == len(samples) and not set(indices) & bad
    # each worker has its own failure log; the items carry which bad samples they replaced
    assert {j for b in batches for r in b["replaced"] for j in r} == bad


def test_too_many_bad_files_raise(video_dir, h):
    samples = [Sample(p, 0) for p in h.BAD]
    ds = VideoClipDataset(samples, root=video_dir, frames=4, train=True, max_retries=3, seed=0)
    with pytest.raises(RuntimeError, match=r"too many bad videos.*max_retries=3.*tada data inspect"):
        ds[0]
    ds = VideoClipDataset([Sample(h.BAD[0], 0), Sample(h.GOOD[0], 0)], root=video_dir, frames=4, train=True,
                          max_retries=0, seed=0)
    with pytest.raises(RuntimeError, match="too many bad videos"):
        ds[0]


def test_test_mode_returns_bad_videos_invalid(video_dir, mixed_list, caplog, h):
    samples, ds = _mixed(video_dir, mixed_list, train=False)
    bad = {i for i, s in enumerate(samples) if s.path in h.BAD}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_views)
        batches = list(loader)
        valid = torch.cat([b["valid"] for b in batches])
        index = torch.cat([b["index"] for b in batches])
        assert index.tolist() == list(range(len(samples)))  # nothing replaced at test time
        assert {i for i, v in zip(index.tolist(), valid.tolist()) if not v} == bad
        assert sum(count_invalid(b) for b in batches) == len(bad)
        videos = torch.cat([b["video"] for b in batches])
        assert videos.shape == (len(samples), 3, 4, 32, 32)
        assert (videos[~valid] == 0).all() and (videos[valid].flatten(1).std(1) > 0.05).all()
    assert set(ds.failures) == {str(video_dir / p) for p in h.BAD}


def test_fill_shape_found_when_the_first_video_is_bad(video_dir, h):
    """A worker whose first item is a bad video still returns a zero clip of the right shape."""
    samples = [Sample(h.BAD[3], 0), Sample(h.GOOD[1], 1)]

    def crop16(clip, label):
        return clip.permute(3, 0, 1, 2).float()[:, :, :16, :16] / 255, label

    ds = VideoClipDataset(samples, root=video_dir, frames=4, train=False, transform=crop16)
    item = ds[0]
    assert not item["valid"] and item["video"].shape == (3, 4, 16, 16) and not item["video"].any()


def test_test_view_expansion(video_dir, h):
    samples = [Sample(p, i % 2) for i, p in enumerate(h.GOOD[:3])]

    def crop(k):
        def t(clip, label):  # left / centre / right 16-px crop
            x = clip.permute(3, 0, 1, 2).float() / 255
            return x[..., 8:24, 8 * k:8 * k + 16], label
        return t

    ds = VideoClipDataset(samples, root=video_dir, frames=4, sampling="segment", train=False, num_clips=4,
                          num_crops=3, transform=[crop(k) for k in range(3)])
    assert len(ds) == 3 * 4 * 3
    views = [(c, k) for c in range(4) for k in range(3)]
    for i in range(len(ds)):
        item = ds[i]
        assert item["index"] == i // 12 and item["view"] == views[i % 12] and item["label"] == (i // 12) % 2
        assert item["video"].shape == (3, 4, 16, 16)
    # different crops of one clip see different pixels; different clips see different frames
    a, b, c = ds[0]["video"], ds[1]["video"], ds[3]["video"]
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[..., 8:], b[..., :8])  # crops 0 and 1 overlap by 8 px
    with pytest.raises(ValueError, match="one per crop index"):
        VideoClipDataset(samples, frames=4, train=False, num_crops=3, transform=[crop(0)])


def test_a_tiny_model_trains_to_completion_over_bad_files(video_dir, mixed_list):
    torch.manual_seed(0)
    _, ds = _mixed(video_dir, mixed_list, train=True)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps, losses = 0, []
    for _ in range(2):
        for batch in DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_views):
            loss = torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            losses.append(loss.item())
    assert steps == 2 * math.ceil(len(ds) / 4)
    assert all(np.isfinite(losses))


def test_dataset_validates_arguments(video_dir, h):
    with pytest.raises(ValueError, match="sampling"):
        VideoClipDataset([Sample(h.GOOD[0], 0)], frames=4, sampling="dense", train=True)
    with pytest.raises(ValueError, match="at least one sample"):
        VideoClipDataset([], frames=4, train=True)
