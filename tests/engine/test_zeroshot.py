"""Zero-shot evaluation against a hand computation (3 classes, a video embedding fixed by each video's
colour and text embeddings chosen by hand, UCF101 / HMDB51 split layouts on real decoded videos), the
mean ± sample std over splits, `tada zeroshot` from a real checkpoint, and open-vocabulary prediction."""
import csv
import itertools
import json
import math

import numpy as np
import pytest
import torch

from tada.data import transforms as TF
from tada.data.labels import LabelSpace
from tada.data.synth import write_video
from tada.engine.checkpoint import save_checkpoint
from tada.engine.config import load_config, to_dict
from tada.engine.tasks import build_task
from tada.engine.predict import read_test_views
from tada.engine.zeroshot import (STD_NOTE, _test_dataset, load_split, load_video_text, main, mean_std,
                                  predict_labels, run_zeroshot, zeroshot)
from tada.models.base import VideoClassifier
from tada.models.text import TextTransformer, tokenize
from tada.models.videotext import VideoTextModel

# solid-colour videos: (folder, file, RGB); purple and teal are closer to blue than to their own class
VIDEOS = [("Red", "v_Red_g01_c01.mp4", (230, 20, 20)), ("Red", "v_Red_g02_c01.mp4", (170, 20, 230)),
          ("Green", "v_Green_g01_c01.mp4", (20, 230, 20)), ("Green", "v_Green_g02_c01.mp4", (20, 170, 230)),
          ("Blue", "v_Blue_g01_c01.mp4", (20, 20, 230))]
SPLITS = {1: ["Red/v_Red_g01_c01.mp4", "Green/v_Green_g01_c01.mp4", "Blue/v_Blue_g01_c01.mp4"],
          2: ["Red/v_Red_g01_c01.mp4", "Red/v_Red_g02_c01.mp4", "Green/v_Green_g01_c01.mp4", "Blue/v_Blue_g01_c01.mp4"],
          3: ["Red/v_Red_g02_c01.mp4", "Green/v_Green_g02_c01.mp4", "Blue/v_Blue_g01_c01.mp4"]}
COLOUR = {f"{d}/{f}": rgb for d, f, rgb in VIDEOS}
CLASSES = ["Red", "Green", "Blue"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """A UCF101-layout dataset: ``UCF-101/{Class}/v_*.mp4`` and ``ucfTrainTestlist/{classInd, testlist0N}.txt``."""
    base = tmp_path_factory.mktemp("ucf")
    videos = base / "UCF-101"
    for folder, name, rgb in VIDEOS:
        (videos / folder).mkdir(parents=True, exist_ok=True)
        frames = np.broadcast_to(np.array(rgb, dtype=np.uint8), (6, 32, 32, 3)).copy()
        write_video(videos / folder / name, frames)
    lists = base / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    for n, entries in SPLITS.items():
        (lists / f"testlist{n:02d}.txt").write_text("\n".join(entries) + "\n")
    return base


def _cfg(root, out, *extra):
    return load_config(None, [
        "data.format=ucf101", f"data.root={root}", "data.frames=2", "data.sampling=segment", "data.test_clips=1",
        "data.test_crops=1", "data.test_short_side=32", "data.test_crop_size=32", "data.normalize=clip",
        "data.batch_size=2", "data.num_workers=0", f"train.output_dir={out}", "train.device=cpu",
        "model.name=tsn_r_mini", "task.name=video_text",
        "task.kwargs={text: {name: tiny, layers: 1}, templates: ['{}']}",
        *extra])


# -- a video-text model whose embeddings are known by hand ----------------------------------------
class MeanColour(VideoClassifier):
    """The video embedding is the clip's mean (normalised) colour: fixed per video."""

    def __init__(self):
        super().__init__()
        self._init_head(3, 0, 0.0)

    def forward_features(self, x):
        return x.mean(dim=(3, 4), keepdim=True)


class WordVectors(TextTransformer):
    """Text embedding = the sum of hand-chosen vectors of the words it contains (others: 0)."""

    def __init__(self, vectors):
        super().__init__(vocab_size=49408, context_length=8, width=8, layers=1, heads=1, embed_dim=3)
        table = torch.zeros(49408, 3)
        for word, v in vectors.items():
            ids = tokenize(word, 8)[0]
            assert int((ids > 0).sum()) == 3, word  # one BPE token between start and end
            table[ids[1]] = torch.tensor(v, dtype=torch.float32)
        self.register_buffer("table", table)

    def forward(self, tokens):
        return self.table[tokens].sum(dim=1)


def _hand_model():
    text = WordVectors({"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)})
    model = VideoTextModel(MeanColour(), text, logit_scale=math.log(50.0))
    with torch.no_grad():
        model.video_proj.weight.copy_(torch.eye(3))
    return model.eval()


def _by_hand(entry):
    """The class the hand-made model must give a video: cos with the one-hot class texts, i.e. the
    largest channel of its CLIP-normalised colour."""
    rgb = np.array(COLOUR[entry]) / 255.0
    v = (rgb - np.array(TF.CLIP_MEAN)) / np.array(TF.CLIP_STD)
    return CLASSES[int(np.argmax(v))]


def test_mean_std_is_the_sample_std():
    assert mean_std([76.0, 78.5, 81.0]) == pytest.approx((78.5, 2.5))
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # n - 1 = 3 in the denominator
    assert std != pytest.approx(math.sqrt(5 / 4))  # not the population std
    assert mean_std([70.0]) == (70.0, None)
    with pytest.raises(ValueError):
        mean_std([])


def test_zero_shot_matches_a_hand_computation_on_three_splits(ucf, tmp_path):
    expected = []
    for n in (1, 2, 3):
        right = [_by_hand(e) == e.split("/")[0] for e in SPLITS[n]]
        expected.append(100.0 * sum(right) / len(right))
    assert expected == pytest.approx([100.0, 75.0, 100 / 3])  # the fixture is what it is meant to be
    model = _hand_model()
    calls = []
    model.text.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    s = run_zeroshot(model, _cfg(ucf / "UCF-101", tmp_path))
    assert [r["split"] for r in s["splits"]] == [1, 2, 3]
    assert [r["top1"] for r in s["splits"]] == pytest.approx(expected)
    assert [r["top5"] for r in s["splits"]] == [100.0] * 3 and [r["videos"] for r in s["splits"]] == [3, 4, 3]
    assert [r["text_encodes"] for r in s["splits"]] == [1, 1, 1] and calls == [3, 3, 3]  # once per split
    mean = sum(expected) / 3
    std = math.sqrt(sum((e - mean) ** 2 for e in expected) / 2)
    assert s["top1_mean"] == pytest.approx(mean) and s["top1_std"] == pytest.approx(std)
    assert s["top5_mean"] == 100.0 and s["top5_std"] == 0.0 and s["std"] == STD_NOTE
    assert s["templates"] == ["{}"] and s["protocol"]["frames"] == 2
    saved = json.loads((tmp_path / "zeroshot_ucf101.json").read_text())
    assert saved["top1_std"] == pytest.approx(std) and len(saved["splits"]) == 3
    with open(tmp_path / "zeroshot_ucf101_split2_per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["class_name"], r["videos"], float(r["accuracy"])) for r in rows] == [
        ("Red", "2", 50.0), ("Green", "1", 100.0), ("Blue", "1", 100.0)]
    # a control: renamed classes whose texts point elsewhere change the answer (the texts are used)
    s2 = run_zeroshot(model, _cfg(ucf / "UCF-101", tmp_path / "renamed"), splits=[1],
                      class_names=["blue", "green", "red"])
    assert s2["splits"][0]["top1"] == pytest.approx(100 / 3)


def test_hmdb51_layout_uses_the_test_videos_of_the_split(ucf, tmp_path):
    root = tmp_path / "hmdb"
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    for folder, name, _ in VIDEOS:
        (root / folder.lower()).mkdir(parents=True, exist_ok=True)
        (root / folder.lower() / name).write_bytes((ucf / "UCF-101" / folder / name).read_bytes())
    for cls in ("red", "green", "blue"):
        files = [n for f, n, _ in VIDEOS if f.lower() == cls]
        tags = ["2", "1"] if len(files) == 2 else ["2"]  # the g02 videos are training videos in split 1
        (lists / f"{cls}_test_split1.txt").write_text("".join(f"{n} {t}\n" for n, t in zip(files, tags)))
    samples, names, _ = load_split("hmdb51", 1, root=root)
    assert names == ["blue", "green", "red"] and sorted(s.path for s in samples) == [
        "blue/v_Blue_g01_c01.mp4", "green/v_Green_g01_c01.mp4", "red/v_Red_g01_c01.mp4"]
    s = run_zeroshot(_hand_model(), _cfg(root, tmp_path / "out", "data.format=hmdb51"), splits=[1])
    assert s["dataset"] == "hmdb51" and s["splits"][0]["top1"] == 100.0 and s["top1_std"] is None
    with pytest.raises(FileNotFoundError, match="split2"):
        load_split("hmdb51", 2, root=root)


def test_any_annotation_list_with_a_class_name_file(ucf, tmp_path):
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "test.txt").write_text("Red/v_Red_g02_c01.mp4 0\nGreen/v_Green_g01_c01.mp4 1\n")
    cfg = _cfg(ucf / "UCF-101", tmp_path / "out", "data.format=kinetics")
    s = run_zeroshot(_hand_model(), cfg, list_path=tmp_path / "test.txt", class_names=tmp_path / "names.txt")
    assert s["dataset"] == "test" and [r["split"] for r in s["splits"]] == [None] and s["top1_mean"] == 50.0
    with pytest.raises(ValueError, match="has 2 class names but"):
        load_split("ucf101", 1, root=ucf / "UCF-101", class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="testlist04.txt not found"):
        load_split("ucf101", 4, root=ucf / "UCF-101")


# -- from a checkpoint: `tada zeroshot` and `tada predict --labels` -------------------------------
@pytest.fixture(scope="module")
def checkpoint(ucf, tmp_path_factory):
    """A video_text checkpoint as `tada train` writes it (tsn_r_mini + a tiny text tower, untrained)."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = _cfg(ucf / "UCF-101", out, "data.format=kinetics", "task.kwargs.templates=['a video of {}.', '{}']")
    labels = LabelSpace.single(["red", "green", "blue"])
    torch.manual_seed(0)
    model = build_task(cfg, labels).build_model(pretrained=False)
    return save_checkpoint(out / "last.pt", model=model, config=to_dict(cfg), class_names=labels.class_names,
                           labels=labels.to_json())


def test_zeroshot_from_a_training_checkpoint(ucf, checkpoint, tmp_path):
    cfg = _cfg(ucf / "UCF-101", tmp_path, "data.normalize=imagenet")  # the checkpoint's normalisation wins
    s = zeroshot(cfg, checkpoint, splits=[1, 2])
    assert s["checkpoint"] == str(checkpoint) and [r["text_encodes"] for r in s["splits"]] == [1, 1]
    assert s["templates"] == ["a video of {}.", "{}"] and s["protocol"]["normalize"] == "clip"
    model, run_cfg, _ = load_video_text(checkpoint, cfg)
    again = run_zeroshot(model, run_cfg, splits=[1, 2], name="again")
    assert [r["top1"] for r in again["splits"]] == [r["top1"] for r in s["splits"]]
    assert json.loads((tmp_path / "zeroshot_ucf101.json").read_text())["checkpoint"] == str(checkpoint)


def test_the_command(ucf, checkpoint, tmp_path, capsys):
    args = ["cfg.yaml", "--checkpoint", str(checkpoint), "--dataset", "ucf101", "--splits", "1", "3",
            "--root", str(ucf / "UCF-101"), f"train.output_dir={tmp_path}", "--no-progress"]
    (tmp_path / "cfg.yaml").write_text(
        "data: {format: ucf101, frames: 2, sampling: segment, test_short_side: 32, test_crop_size: 32, "
        "batch_size: 2, num_workers: 0}\ntrain: {device: cpu}\n")
    args[0] = str(tmp_path / "cfg.yaml")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ucf101 split 1: top-1" in out and "ucf101 split 3" in out and "± " in out
    assert (tmp_path / "zeroshot_ucf101_split3_per_class.csv").exists()
    assert main([str(tmp_path / "cfg.yaml"), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([str(tmp_path / "cfg.yaml"), "--checkpoint", str(checkpoint), "--list", "x.txt",
                 "--dataset", "ucf101"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_checkpoint_of_another_task_is_refused(ucf, tmp_path):
    cfg = load_config(None, ["model.name=tsn_r_mini", f"train.output_dir={tmp_path}"])
    from tada.models import create_model

    path = save_checkpoint(tmp_path / "cls.pt", model=create_model("tsn_r_mini", num_classes=3), config=to_dict(cfg),
                           class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="needs a video-text model"):
        zeroshot(_cfg(ucf / "UCF-101", tmp_path), path)


def test_predict_labels_ranks_free_text_labels_on_real_videos(ucf, checkpoint, tmp_path):
    video = ucf / "UCF-101" / "Red" / "v_Red_g01_c01.mp4"
    labels = ["red", "a green thing", "blue", "playing guitar"]
    (bad := tmp_path / "broken.mp4").write_bytes(b"not a video")
    got = predict_labels([str(video), str(bad)], checkpoint, labels)
    top = got[0]["top"]
    assert sorted(n for n, _ in top) == sorted(labels) and len(top) == 4
    scores = [p for _, p in top]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert "error" in got[1] and got[1]["video"] == str(bad)
    # the scores are the softmax of the model's logits against the labels' prompts, by hand
    model, cfg, _ = load_video_text(checkpoint)
    x, _ = read_test_views(video, cfg.data, None)
    tokens = tokenize([t for lb in labels for t in (f"a video of {lb}.", lb)], 16).reshape(4, 2, 16)
    with torch.no_grad():
        want = torch.softmax(model(x, class_tokens=tokens), dim=1).mean(0)
    assert dict(top) == pytest.approx(dict(zip(labels, want.tolist())), abs=1e-5)
    # templates given, top-k, the checkpoint's own classes
    assert len(predict_labels([str(video)], checkpoint, labels, templates=["{}"], topk=2)[0]["top"]) == 2
    assert sorted(n for n, _ in predict_labels([str(video)], checkpoint)[0]["top"]) == ["blue", "green", "red"]
    with pytest.raises(ValueError, match="given twice"):
        predict_labels([str(video)], checkpoint, ["red", "red"])
    with pytest.raises(ValueError, match="non-empty"):
        predict_labels([str(video)], checkpoint, ["red", " "])


def test_tada_predict_labels_command(ucf, checkpoint, tmp_path, capsys):
    # `tada predict VIDEO --checkpoint CKPT --labels a,b,c` prints every given label, ranked, with its score
    from tada.cli import main as tada

    video = ucf / "UCF-101" / "Red" / "v_Red_g01_c01.mp4"
    assert tada(["predict", str(video), "--checkpoint", str(checkpoint), "--labels", "red,a green thing,blue"]) == 0
    lines = [ln.split(None, 1) for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [name for _, name in lines] == [n for n, _ in predict_labels([str(video)], checkpoint,
                                                                         ["red", "a green thing", "blue"])[0]["top"]]
    assert sum(float(p.rstrip("%")) for p, _ in lines) == pytest.approx(100.0, abs=0.05)
    (tmp_path / "labels.txt").write_text("blue\nred\n")
    assert tada(["predict", str(video), "--checkpoint", str(checkpoint), "--labels-file",
                 str(tmp_path / "labels.txt")]) == 0
    assert {ln.split(None, 1)[1] for ln in capsys.readouterr().out.splitlines()[1:]} == {"blue", "red"}


def test_clip_itself_zero_shot_without_a_checkpoint_equals_open_clip(ucf, tmp_path):
    """No checkpoint: the config's model is built from a CLIP file (here a tiny random open_clip CLIP); on
    static clips the TSN-ViT's video embedding is open_clip's image embedding of the frame, so each
    prediction must be open_clip's own zero-shot answer (prompts averaged as CLIP does)."""
    open_clip = pytest.importorskip("open_clip")
    import torch.nn.functional as F

    torch.manual_seed(11)
    ref = open_clip.model.CLIP(
        embed_dim=16, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, head_width=64, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=49408, width=64, heads=1, layers=1),
    ).eval()
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    templates = ["a video of a person {}.", "{}"]
    cfg = _cfg(ucf / "UCF-101", tmp_path, "model.name=tsn_vit_b16_clip",
               "model.kwargs={width: 64, layers: 1, heads: 1, patch_size: 8, img_size: 32}",
               f"task.kwargs={{clip: {tmp_path / 'clip.pt'}, templates: {templates}}}")
    s = zeroshot(cfg, None, splits=[2])
    samples, names, _ = load_split("ucf101", 2, root=ucf / "UCF-101")
    ds = _test_dataset(cfg, samples)
    labels = torch.tensor([smp.label for smp in samples])
    with torch.no_grad():
        img = F.normalize(ref.encode_image(torch.stack([ds[i]["video"][:, 0] for i in range(len(ds))])), dim=-1)

        def by_hand(names):
            prompts = [t.replace("{}", n.lower()) for n in names for t in templates]
            txt = F.normalize(ref.encode_text(open_clip.tokenize(prompts, context_length=16)), dim=-1)
            txt = F.normalize(txt.reshape(3, 2, -1).mean(1), dim=-1)
            return 100.0 * ((img @ txt.t()).argmax(1) == labels).float().mean().item()

    assert s["checkpoint"] is None and s["splits"][0]["top1"] == pytest.approx(by_hand(names))
    # every assignment of the names to the classes: the answers follow open_clip's (not always 0 or 100)
    model = build_task(cfg, LabelSpace.single(names)).build_model(pretrained=True).eval()
    got, want = [], []
    for perm in itertools.permutations(names):
        got.append(run_zeroshot(model, cfg, splits=[2], class_names=list(perm), name="perm")["top1_mean"])
        want.append(by_hand(perm))
    assert got == pytest.approx(want) and len(set(want)) > 1
