"""Untrimmed annotations: ActivityNet / HACS JSON and Epic-Kitchens-100 CSVs, their errors, the round trip."""
from __future__ import annotations

import json
import logging

import pytest

from tada.data.segments import (Segment, UntrimmedVideo, class_names, load_activitynet_json, load_ek100_segments,
                                write_activitynet_json)

ANET = {
    "version": "VERSION 1.3",
    "taxonomy": [{"nodeName": "Long jump", "nodeId": 1, "parentId": 0, "parentName": "Sports"}],
    "database": {
        "vB": {"duration": 60.0, "subset": "training", "resolution": "640x360", "url": "https://youtu.be/vB",
               "annotations": [{"segment": [5.5, 20.25], "label": "Long jump"}]},
        "vA": {"duration": 100.0, "subset": "validation",
               "annotations": [{"segment": [1.0, 10.0], "label": "Shot put"},
                               {"segment": [30.0, 40.0], "label": "Long jump"}]},
        "vT": {"duration": 80.0, "subset": "testing", "annotations": []},
        "vN": {"duration": 70, "subset": "testing"},
    },
}


def _write(tmp_path, doc, name="gt.json"):
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return f


def test_activitynet_json_in_file_order_with_subsets(tmp_path):
    f = _write(tmp_path, ANET)
    videos = load_activitynet_json(f)
    assert list(videos) == ["vB", "vA", "vT", "vN"]
    a = videos["vA"]
    assert a == UntrimmedVideo("vA", 100.0, "validation",
                               (Segment(1.0, 10.0, "Shot put"), Segment(30.0, 40.0, "Long jump")))
    assert videos["vT"].segments == () and videos["vN"].segments == () and videos["vN"].duration == 70.0
    assert list(load_activitynet_json(f, "validation")) == ["vA"]
    assert list(load_activitynet_json(f, subset="testing")) == ["vT", "vN"]
    assert class_names(videos) == ["Long jump", "Shot put"]
    with pytest.raises(ValueError, match=r"gt\.json: no video of subset 'val'.*'testing', 'training', 'validation'"):
        load_activitynet_json(f, "val")


def test_hacs_layout_without_version_or_taxonomy(tmp_path):
    # HACS Segments v1.1.1 has the same database layout; a string duration is read as a number
    f = _write(tmp_path, {"database": {"h1": {"subset": "validation", "duration": "12.5", "url": "u",
                                              "annotations": [{"label": "Archery", "segment": [0.0, 12.5]}]}}})
    v = load_activitynet_json(f)["h1"]
    assert v.duration == 12.5 and v.segments == (Segment(0.0, 12.5, "Archery"),)


def test_end_beyond_duration_is_clipped_unless_asked_not_to(tmp_path):
    doc = {"database": {"v": {"duration": 50.0, "subset": "validation",
                              "annotations": [{"segment": [40.0, 52.5], "label": "a"}]}}}
    f = _write(tmp_path, doc)
    assert load_activitynet_json(f)["v"].segments == (Segment(40.0, 50.0, "a"),)
    assert load_activitynet_json(f, clip_to_duration=False)["v"].segments == (Segment(40.0, 52.5, "a"),)


def test_segment_starting_after_the_video_is_an_error(tmp_path):
    doc = {"database": {"v7": {"duration": 50.0, "subset": "validation",
                               "annotations": [{"segment": [1, 2], "label": "a"},
                                               {"segment": [50.0, 55.0], "label": "a"}]}}}
    f = _write(tmp_path, doc)
    with pytest.raises(ValueError, match=r"gt\.json: video 'v7' annotation 1: .*starts at or after the end"):
        load_activitynet_json(f)
    assert len(load_activitynet_json(f, clip_to_duration=False)["v7"].segments) == 2


def test_zero_length_segments_dropped_with_a_warning_or_kept(tmp_path, caplog):
    # ActivityNet 1.3 has a few, e.g. ZZVrH3Hv1fM [0, 0]
    doc = {"database": {"ZZVrH3Hv1fM": {"duration": 30.0, "subset": "validation",
                                        "annotations": [{"segment": [0, 0], "label": "Washing hands"},
                                                        {"segment": [3, 9], "label": "Washing hands"}]}}}
    f = _write(tmp_path, doc)
    with caplog.at_level(logging.WARNING, logger="tada.data.segments"):
        v = load_activitynet_json(f)["ZZVrH3Hv1fM"]
    assert v.segments == (Segment(3.0, 9.0, "Washing hands"),)
    assert "1 zero-length" in caplog.text and "ZZVrH3Hv1fM" in caplog.text
    kept = load_activitynet_json(f, keep_zero_length=True)["ZZVrH3Hv1fM"]
    assert kept.segments[0] == Segment(0.0, 0.0, "Washing hands") and len(kept.segments) == 2


@pytest.mark.parametrize("entry, message", [
    ({"subset": "validation", "annotations": []}, r"video 'bad': no 'duration'"),
    ({"duration": -3, "subset": "validation"}, r"video 'bad': 'duration' must be a positive"),
    ({"duration": 10, "annotations": []}, r"video 'bad': 'subset' must be a string"),
    ({"duration": 10, "subset": "validation", "annotations": {"segment": [1, 2]}},
     r"video 'bad': 'annotations' must be a list"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [1, 2], "label": "a"}, {"segment": [1],
                                                                                                "label": "a"}]},
     r"video 'bad' annotation 1: 'segment' must be two numbers"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": ["1", 2], "label": "a"}]},
     r"video 'bad' annotation 0: 'segment' must be two finite numbers"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [1, 2], "label": 5}]},
     r"video 'bad' annotation 0: 'label' must be a string"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [float("nan"), 2], "label": "a"}]},
     r"video 'bad' annotation 0: 'segment' must be two finite numbers"),
    ({"duration": float("inf"), "subset": "validation"}, r"video 'bad': 'duration' must be a positive"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [-1, 2], "label": "a"}]},
     r"video 'bad' annotation 0: segment \[-1.0, 2.0\] starts before 0"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [5, 2], "label": "a"}]},
     r"video 'bad' annotation 0: segment \[5.0, 2.0\] ends before it starts"),
    ({"duration": 10, "subset": "validation", "annotations": [{"segment": [1, 2], "label": "a", "verb": -2}]},
     r"video 'bad' annotation 0: 'verb' must be a class id"),
])
def test_malformed_entries_name_the_file_and_video(tmp_path, entry, message):
    doc = {"database": {"good": {"duration": 5, "subset": "validation", "annotations": []}, "bad": entry}}
    f = tmp_path / "anet.json"
    f.write_text(json.dumps(doc))  # json.dumps writes NaN / Infinity tokens, which json.loads reads back
    with pytest.raises(ValueError, match=r"anet\.json: " + message):
        load_activitynet_json(f)


def test_unreadable_files_say_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.json: no such"):
        load_activitynet_json(tmp_path / "missing.json")
    f = tmp_path / "latin1.json"
    f.write_bytes('{"database": {"caf\xe9": {}}}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json:1: .*not UTF-8"):
        load_activitynet_json(f)
    f = tmp_path / "broken.json"
    f.write_text('{"database": {\n  "v": {"duration": 3,,}}}')
    with pytest.raises(ValueError, match=r"broken\.json:2:\d+: not valid JSON"):
        load_activitynet_json(f)
    f = tmp_path / "list.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: expected an ActivityNet-style JSON object with a 'database'"):
        load_activitynet_json(f)


def test_write_then_load_gives_equal_objects(tmp_path):
    videos = {
        "P01_01": UntrimmedVideo("P01_01", 1652.152817, "validation",
                                 (Segment(0.5, 1.5, "3,8", verb=3, noun=8), Segment(1.0, 1.9, "0,13", verb=0, noun=13)),
                                 fps=50.0),
        "v2": UntrimmedVideo("v2", 10.0 / 3.0, "testing", ()),
        "v3": UntrimmedVideo("v3", 61.0, "training", (Segment(0.1 + 0.2, 60.999999999, "Long jump"),)),
    }
    f = tmp_path / "sub" / "out.json"
    write_activitynet_json(videos, f, version="test")
    raw = json.loads(f.read_text())
    assert raw["version"] == "test" and "taxonomy" in raw
    assert raw["database"]["P01_01"]["annotations"][0] == {"segment": [0.5, 1.5], "label": "3,8", "verb": 3, "noun": 8}
    back = load_activitynet_json(f)
    assert back == videos and list(back) == list(videos)
    assert list(tmp_path.joinpath("sub").iterdir()) == [f]  # no temporary file left behind


EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
EPIC_ROWS = (
    "P02_03_0,P02,P02_03,00:00:01.00,00:00:02.50,00:00:04.00,150,240,open door,open,3,door,8,['door'],[8]\n"
    'P01_01_0,P01,P01_01,00:00:00.00,00:01:02.50,00:01:05.25,3750,3915,"take cup, plate",take,0,cup,13,'
    "\"['cup', 'plate']\",\"[13, 20]\"\n"
    "P02_03_1,P02,P02_03,00:00:05.00,00:00:05.00,00:00:09.75,300,585,wash cup,wash,2,cup,13,['cup'],[13]\n"
)


def _epic(tmp_path, rows=EPIC_ROWS, name="EPIC_100_validation.csv"):
    f = tmp_path / name
    f.write_text(EPIC_HEADER + rows)
    return f


def test_ek100_segments_with_video_info(tmp_path):
    f = _epic(tmp_path)
    info = tmp_path / "EPIC_100_video_info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,1652.15,50.0,1920x1080\nP02_03,9.5,59.94,1920x1080\n")
    videos = load_ek100_segments(f, video_info=info, subset="validation")
    assert list(videos) == ["P02_03", "P01_01"]  # first occurrence in the CSV
    p2 = videos["P02_03"]
    assert p2.duration == 9.5 and p2.fps == 59.94 and p2.subset == "validation"
    # the second row ends at 9.75 s, after the 9.5 s video: clipped
    assert p2.segments == (Segment(2.5, 4.0, "3,8", verb=3, noun=8), Segment(5.0, 9.5, "2,13", verb=2, noun=13))
    assert videos["P01_01"].segments == (Segment(62.5, 65.25, "0,13", verb=0, noun=13),)
    assert class_names(videos) == ["0,13", "2,13", "3,8"]
    # a mapping works too, and the export round-trips with verb/noun
    again = load_ek100_segments(f, video_info={"P01_01": 1652.15, "P02_03": 9.5}, subset="training")
    assert again["P02_03"].subset == "training" and again["P02_03"].fps is None
    out = tmp_path / "ek.json"
    write_activitynet_json(videos, out)
    assert load_activitynet_json(out) == videos


def test_ek100_without_video_info_uses_last_stop_and_warns(tmp_path, caplog):
    f = _epic(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tada.data.segments"):
        videos = load_ek100_segments(f)
    assert videos["P02_03"].duration == 9.75 and videos["P01_01"].duration == 65.25
    assert caplog.text.count("no video_info") == 1


def test_ek100_errors(tmp_path):
    f = _epic(tmp_path)
    with pytest.raises(ValueError, match=r"P01_01 are not in video_info"):
        load_ek100_segments(f, video_info={"P02_03": 10.0})
    info = tmp_path / "info.csv"
    info.write_text("video_id,duration,fps,resolution\nP01_01,abc,50,1x1\n")
    with pytest.raises(ValueError, match=r"info\.csv:2: video 'P01_01': duration must be a positive number"):
        load_ek100_segments(f, video_info=info)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such video info file"):
        load_ek100_segments(f, video_info=tmp_path / "nope.csv")
    # a segment that starts after the (given) end of its video
    with pytest.raises(ValueError, match=r"video 'P01_01' narration P01_01_0: .*starts at or after the end"):
        load_ek100_segments(f, video_info={"P01_01": 60.0, "P02_03": 10.0})
    # the unlabelled test timestamps
    test = tmp_path / "EPIC_100_test_timestamps.csv"
    test.write_text("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
                    "start_frame,stop_frame\nP01_11_0,P01,P01_11,00:00:00.00,00:00:00.50,00:00:01.00,25,50\n")
    with pytest.raises(ValueError, match=r"no verb_class / noun_class columns"):
        load_ek100_segments(test)
    # malformed rows are reported by the shared EK100 parser, with the line number
    bad = _epic(tmp_path, EPIC_ROWS + "P03_01_0,P03,P03_01,00:00:01,1.5s,00:00:02.00,1,2,x,x,1,y,2,[],[]\n", "bad.csv")
    with pytest.raises(ValueError, match=r"bad\.csv:5: .*HH:MM:SS\.ff"):
        load_ek100_segments(bad)


def test_segment_and_video_validate_themselves():
    with pytest.raises(ValueError, match="end >= start"):
        Segment(3.0, 1.0, "a")
    with pytest.raises(ValueError, match="label must be a string"):
        Segment(0.0, 1.0, 7)
    with pytest.raises(ValueError, match="duration must be a positive"):
        UntrimmedVideo("v", 0.0, "validation", ())
    assert UntrimmedVideo("v", 2.0, "validation", [Segment(0, 1, "a")]).segments == (Segment(0, 1, "a"),)
    assert Segment(1.5, 4.0, "a").length == 2.5
