"""Decoding: real files written with PyAV / PIL whose frames encode their own index.

Frame ``i`` is a flat background whose level changes every 90 frames plus a white 16×16 square whose
position cycles through 90 places, so every frame of a 300-frame video is unique and survives lossy
compression; a decoded frame is identified as the original it is closest to.
"""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from tada.data.decode import (
    DecodeStats,
    VideoDecodeError,
    VideoInfo,
    available_backends,
    list_frame_files,
    probe,
    read_frames,
    read_time_range,
)

W, H = 160, 96


def render(i: int) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    level = 30 + 50 * ((i // 90) % 4)
    img[:] = (level, 255 - level, (level * 3) % 256)
    x, y = 8 * (i % 18), 16 * ((i // 18) % 5)
    img[y:y + 16, x:x + 16] = 255
    return img


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) -> (N, H/8 * W/8 * 3) means of 8x8 blocks (robust to compression noise)."""
    n = x.shape[0]
    return x.float().reshape(n, H // 8, 8, W // 8, 8, 3).mean(dim=(2, 4)).reshape(n, -1)


_REFS = _blocks(torch.from_numpy(np.stack([render(i) for i in range(360)])))


def identify(frames: torch.Tensor, n: int) -> list[int]:
    """Index of the original frame (among the first n) closest to each decoded frame."""
    d = torch.cdist(_blocks(frames), _REFS[:n]) ** 2 / _REFS.shape[1]  # mean squared block error
    best = d.argmin(dim=1)
    err = d.gather(1, best[:, None])
    assert (err < 60).all(), f"a decoded frame resembles no original (mse {err.max():.1f})"
    return best.tolist()


def write_video(path, codec: str, n: int, fps: int = 30, gop: int = 30, options=None, pts_ms=None,
                container_options=None):
    """Encode frames render(0..n-1). With ``pts_ms`` the frames get these timestamps (ms)."""
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        s.options = dict(options or {})
        for i in range(n):
            f = av.VideoFrame.from_ndarray(render(i), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


X264 = {"crf": "18", "preset": "veryfast"}
VP9 = {"crf": "20", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    out = {
        "mp4": write_video(d / "clip.mp4", "libx264", 60, options=X264),
        "webm": write_video(d / "clip.webm", "libvpx-vp9", 60, options=VP9),
        "long": write_video(d / "long.mp4", "libx264", 300, gop=30, options={**X264, "sc_threshold": "0"}),
        "faststart": write_video(d / "fast.mp4", "libx264", 300, gop=30,
                                 options=X264, container_options={"movflags": "+faststart"}),
        "long_webm": write_video(d / "long.webm", "libvpx-vp9", 300, gop=30, options=VP9),
    }
    folder = d / "frames"
    folder.mkdir()
    from PIL import Image

    for i in range(25):  # img_1.jpg … img_25.jpg: natural sort matters (img_10 after img_9)
        Image.fromarray(render(i)).save(folder / f"img_{i + 1}.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    out["frames"] = str(folder)
    return out


ARBITRARY = [5, 0, 59, 17, 17, 3, 58, 1000, 30, 29]


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_probe_video(videos, kind):
    info = probe(videos[kind])
    assert isinstance(info, VideoInfo)
    assert (info.num_frames, info.fps, info.width, info.height) == (60, 30.0, W, H)
    assert info.duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_read_arbitrary_indices(videos, kind):
    x = read_frames(videos[kind], ARBITRARY)
    assert x.dtype == torch.uint8 and x.shape == (len(ARBITRARY), H, W, 3)
    assert identify(x, 60) == [min(i, 59) for i in ARBITRARY]


def test_frame_folder(videos):
    files = list_frame_files(videos["frames"])
    assert [f.rsplit("/", 1)[1] for f in files[8:11]] == ["img_9.jpg", "img_10.jpg", "img_11.jpg"]
    info = probe(videos["frames"])
    assert (info.num_frames, info.fps, info.width, info.height) == (25, 30.0, W, H)
    assert probe(videos["frames"], fps=12.5).fps == 12.5
    assert probe(videos["frames"], fps=12.5).duration == pytest.approx(2.0)
    idx = [24, 3, 3, 10, 9, 0, 99]
    x = read_frames(videos["frames"], idx)
    assert x.shape == (len(idx), H, W, 3)
    assert identify(x, 25) == [min(i, 24) for i in idx]
    # a directory is a frame folder whatever the backend argument says
    assert torch.equal(read_frames(videos["frames"], idx, backend="pyav"), x)


@pytest.mark.parametrize("kind", ["long", "long_webm"])
def test_seek_decodes_only_the_needed_range(videos, kind):
    stats = DecodeStats()
    idx = [290, 299, 285, 295]
    x = read_frames(videos[kind], idx, stats=stats)
    assert identify(x, 300) == idx
    assert stats.seeks >= 1
    # one GOP (30 frames) plus decoder look-ahead, not 300
    assert stats.decoded <= 45, stats
    assert stats.converted == 4
    # a clip at the start needs no seek and stops early
    stats = DecodeStats()
    assert identify(read_frames(videos[kind], [0, 4, 8], stats=stats), 300) == [0, 4, 8]
    assert stats.seeks == 0 and stats.decoded <= 15


def test_long_video_across_gops(videos):
    idx = list(range(100, 300, 13)) + [29, 30, 31, 299, 0]
    assert identify(read_frames(videos["long"], idx), 300) == idx
    assert probe(videos["long"]).num_frames == 300


def test_read_time_range(videos):
    x = read_time_range(videos["mp4"], 1.0, 1.2)  # grid frames 30..36
    assert identify(x, 60) == list(range(30, 37))


def test_variable_frame_rate_selects_by_timestamp(tmp_path):
    # 8 frames with uneven gaps (ms); on a 30 fps grid (slot = round(t * 30 / 1000)) they occupy
    # slots 0, 1, 3, 3, 6, 10, 11, 15.  Frame k of the video = last frame whose slot <= k.
    pts = [0, 33, 90, 110, 200, 333, 366, 500]
    path = write_video(tmp_path / "vfr.mkv", "libx264", len(pts), options=X264, pts_ms=pts)
    x = read_frames(path, list(range(16)), fps=30)
    slots = [0, 1, 3, 3, 6, 10, 11, 15]
    expected = [max(j for j, s in enumerate(slots) if s <= k) for k in range(16)]
    assert expected == [0, 1, 1, 3, 3, 3, 4, 4, 4, 4, 5, 6, 6, 6, 6, 7]
    assert identify(x, len(pts)) == expected
    # the same rule after a seek
    assert identify(read_frames(path, [12, 7, 15], fps=30), len(pts)) == [6, 4, 7]


def test_errors_name_the_path(videos, tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError, match="nope.mp4.*not found") as e:
        read_frames(missing, [0])
    assert e.value.path == str(missing)
    with pytest.raises(VideoDecodeError, match="not found"):
        probe(missing)

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4.*empty"):
        probe(empty)

    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoDecodeError, match="text.mp4") as e:
        read_frames(text, [0])
    assert e.value.path == str(text)

    with pytest.raises(ValueError):
        read_frames(videos["mp4"], [-1])
    with pytest.raises(ValueError, match="unknown video backend"):
        read_frames(videos["mp4"], [0], backend="nonsense")


@pytest.mark.parametrize("kind", ["long", "faststart", "long_webm"])
def test_truncated_file(videos, tmp_path, kind):
    src = open(videos[kind], "rb").read()
    cut = tmp_path / ("cut_" + videos[kind].rsplit("/", 1)[1])
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(VideoDecodeError, match=cut.name) as e:
        probe(cut)
        read_frames(cut, [250, 290, 299])
    assert e.value.path == str(cut)


def test_backends(videos):
    assert available_backends()[0] == "pyav" and "frames" in available_backends()
    for name in ("torchcodec", "decord"):
        if name not in available_backends():
            with pytest.raises(ImportError, match=name):
                read_frames(videos["mp4"], [0], backend=name)
        else:  # installed: same frames as PyAV for a constant-frame-rate file
            assert identify(read_frames(videos["mp4"], ARBITRARY, backend=name), 60) == \
                [min(i, 59) for i in ARBITRARY]
