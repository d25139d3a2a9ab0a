"""The engine tests' data: real H.264 files of three easy classes, made once per session."""
import numpy as np
import pytest

from tada.data.synth import write_video

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Real H.264 files of three easy classes (the dominant colour of a noisy clip), Kinetics-style
    lists: the engine's tests need data a model learns in seconds; the temporal benchmark is elsewhere."""
    out = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    lists = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        for i in range(16):
            clip = rng.integers(0, 90, size=(8, 32, 32, 3)).astype(np.uint8)
            clip[..., label] += np.uint8(120 + rng.integers(0, 40))
            rel = f"videos/{name}_{i:02d}.mp4"
            (out / "videos").mkdir(exist_ok=True)
            write_video(out / rel, clip, fps=30)
            split = "train" if i < 10 else ("val" if i < 13 else "test")
            lists[split].append(f"{rel} {label}")
    for split, lines in lists.items():
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return out
