"""`tada data inspect`: decode every listed video, report counts, stats and the bad files."""
from __future__ import annotations

import json

import pytest

from tada.cli import main
from tada.data.inspect import format_report, inspect_dataset


def test_report_on_good_and_bad_files(video_dir, mixed_list, h):
    report = inspect_dataset(mixed_list, progress=False)
    assert report["format"] == "kinetics"  # detected from the content of mixed.txt
    assert (report["num_samples"], report["num_videos"], report["num_ok"], report["num_bad"]) == (11, 11, 6, 5)
    assert report["num_classes"] == 2 and report["classes_seen"] == 2
    # per-class counts: class 0 is a_0, a_2, a_4; class 1 is b_1, b_3, b_5 and the 5 bad files
    assert report["per_class"] == {"min": 3, "max": 8, "min_class": "0", "max_class": "1"}
    st = report["stats"]
    assert st["fps"] == {"min": 30.0, "median": 30.0, "max": 30.0}
    assert st["width"]["min"] == st["height"]["max"] == h.SIZE
    assert st["num_frames"]["median"] == h.FRAMES
    assert st["duration"]["median"] == pytest.approx(h.FRAMES / 30, abs=0.05)
    bad = {b["path"]: b["reason"] for b in report["bad"]}
    assert set(bad) == set(h.BAD)
    assert bad["bad/missing.mp4"] == "file not found" and "0 bytes" in bad["bad/zero.mp4"]
    assert all(bad[p] for p in h.BAD)
    text = format_report(report)
    assert "6 readable, 5 bad" in text and all(f"  {p}: " in text for p in h.BAD)


def test_cli_exit_codes_and_json(video_dir, mixed_list, h, tmp_path, capsys):
    assert main(["data", "inspect", str(mixed_list), "--root", str(video_dir), "--json", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["num_bad"] == 5 and {b["path"] for b in report["bad"]} == set(h.BAD)

    # A generic CSV with absolute paths, format detected, only good files: exit code 0.
    good = tmp_path / "good.csv"
    good.write_text("".join(f"{video_dir / p},{'walk' if i % 2 else 'run'}\n" for i, p in enumerate(h.GOOD)))
    assert main(["data", "inspect", str(good), "--quiet", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "format csv" in out and "6 readable, 0 bad" in out and "all files readable" in out
    assert "classes     2 declared" in out and "fps         min 30, median 30, max 30" in out

    assert main(["data", "inspect", str(tmp_path / "nope.txt"), "--quiet"]) == 2


def test_folder_format_and_progress_bar(video_dir, tmp_path, h, capsys):
    import shutil

    for i, p in enumerate(h.GOOD[:4]):
        (tmp_path / f"class{i % 2}").mkdir(exist_ok=True)
        shutil.copy(video_dir / p, tmp_path / f"class{i % 2}" / f"v{i}.mp4")
    shutil.copy(video_dir / "bad" / "text.mp4", tmp_path / "class1" / "broken.mp4")
    report = inspect_dataset(tmp_path)  # detected: folder-per-class; progress bar on stderr
    assert report["format"] == "folder" and report["num_videos"] == 5 and report["num_bad"] == 1
    assert report["bad"][0]["path"] == "class1/broken.mp4"
    assert report["per_class"]["max_class"] == "class1"
    assert "inspect" in capsys.readouterr().err


def test_epic_clips_past_the_end_are_reported(tmp_path, h):
    from tada.data.synth import write_video

    (tmp_path / "P01").mkdir()
    write_video(tmp_path / "P01" / "P01_01.MP4", h.index_frames(30))  # 1 s
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
              "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    rows = ("P01_01_0,P01,P01_01,00:00:00.00,00:00:00.10,00:00:00.90,6,54,open tap,open,3,tap,0,['tap'],[0]\n"
            "P01_01_1,P01,P01_01,00:00:05.00,00:00:05.00,00:00:06.00,300,360,wash cup,wash,2,cup,1,['cup'],[1]\n")
    (tmp_path / "EPIC_100_validation.csv").write_text(header + rows)
    report = inspect_dataset(tmp_path / "EPIC_100_validation.csv", progress=False)
    assert report["format"] == "epic" and report["num_samples"] == 2 and report["num_videos"] == 1
    assert report["num_classes"] == [4, 2] and report["classes_seen"] == 2
    assert report["num_bad"] == 1 and "after the end" in report["bad"][0]["reason"]


def test_cli_rejects_unusable_lists_naming_file_and_line(tmp_path, capsys):
    """A label outside classes.txt, an empty list, a Latin-1 list: exit code 2 and one line that says
    where, before any video is opened."""
    (tmp_path / "classes.txt").write_text("run\nwalk\njump\n")
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 2\nc.mp4 99\n")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    (tmp_path / "latin.txt").write_bytes("a.mp4 0\ncafé.mp4 1\n".encode("latin-1"))
    for name, says in (("train.txt:3", "label 99 is out of range"), ("empty.txt", "empty"),
                       ("latin.txt:2", "not UTF-8")):
        assert main(["data", "inspect", str(tmp_path / name.split(":")[0]), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{name}: " in err and says in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"train\.txt:3: label 99"):
        inspect_dataset(tmp_path / "train.txt", progress=False)
