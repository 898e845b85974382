"""Wan VAE streaming wrapper: block streaming equals diffusers' whole-clip encode/decode (tiny config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipar_core.autoencoders.wan_vae import WanVAEAutoencoder, tiny_wan_vae

H, W = 32, 48


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _stats(ae: WanVAEAutoencoder) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(ae.vae.config.latents_mean).view(1, 1, -1, 1, 1)
    std = torch.tensor(ae.vae.config.latents_std).view(1, 1, -1, 1, 1)
    return mean, std


def _reference_latents(ae: WanVAEAutoencoder, frames: torch.Tensor) -> torch.Tensor:
    """diffusers' own whole-clip encode: posterior mode, normalised (z - mean) / std, as [B, L, C, h, w]."""
    mean, std = _stats(ae)
    mode = ae.vae.encode(frames.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
    return (mode.permute(0, 2, 1, 3, 4) - mean) / std


def _reference_frames(ae: WanVAEAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' own whole-clip decode of normalised latents, as [B, T, 3, H, W] in [0, 1]."""
    mean, std = _stats(ae)
    video = ae.vae.decode((latents * std + mean).permute(0, 2, 1, 3, 4)).sample
    return (video.permute(0, 2, 1, 3, 4) + 1) / 2


def _assert_same_weights(a: WanVAEAutoencoder, b: WanVAEAutoencoder) -> None:
    sa, sb = a.vae.state_dict(), b.vae.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def ae() -> WanVAEAutoencoder:
    return tiny_wan_vae(0)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return _rand(2, 36, 3, H, W, seed=0)


def test_attributes_and_determinism(ae: WanVAEAutoencoder) -> None:
    assert (ae.latent_channels, ae.temporal_stride, ae.spatial_stride) == (16, 4, 8)
    state = torch.random.get_rng_state()
    again = tiny_wan_vae(0)
    assert torch.equal(state, torch.random.get_rng_state())
    _assert_same_weights(ae, again)


def test_stream_encode_equals_diffusers_whole_clip(ae: WanVAEAutoencoder, clip: torch.Tensor) -> None:
    with torch.inference_mode():
        enc = ae.encoder_stream()
        blocks = [enc(clip[:, i : i + 12]) for i in range(0, 36, 12)]
        assert [b.shape for b in blocks] == [(2, 3, 16, H // 8, W // 8)] * 3
        assert enc.pending_frames == 3  # frames 33..35 wait for the next block
        latents = torch.cat(blocks, dim=1)
        ref = _reference_latents(ae, clip[:, :33])  # 1 + 4 * 8 frames consumed -> 9 latents
    assert ref.shape == latents.shape
    assert ref.std() > 0.1
    torch.testing.assert_close(latents, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    # The causal cache carried across calls matters: a stream restarted per block differs.
    with torch.inference_mode():
        restarted = ae.encoder_stream()(clip[:, 12:24])
    assert (restarted - latents[:, 3:6]).abs().max() > 1e-2


def test_stream_decode_equals_diffusers_whole_clip(ae: WanVAEAutoencoder) -> None:
    latents = torch.randn(2, 9, 16, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dec = ae.decoder_stream()
        blocks = [dec(latents[:, i : i + 3]) for i in range(0, 9, 3)]
        # The stream's first latent gives 1 frame, every later latent 4.
        assert [b.shape[1] for b in blocks] == [9, 12, 12]
        frames = torch.cat(blocks, dim=1)
        ref = _reference_frames(ae, latents)
    assert frames.shape == ref.shape == (2, 33, 3, H, W)
    assert frames.min() >= 0 and frames.max() <= 1
    assert ref.std() > 0.01
    torch.testing.assert_close(frames, ref, rtol=1e-4, atol=1e-4)

    with torch.inference_mode():
        restarted = ae.decoder_stream()(latents[:, 3:6])
    assert (restarted[:, -8:] - frames[:, -8 - 12 : -12]).abs().max() > 1e-3


def test_uneven_calls_and_one_chunk_per_pass(clip: torch.Tensor) -> None:
    """Calls of any length and chunk-by-chunk passes give the same latents and frames."""
    whole_ae, chunked_ae = tiny_wan_vae(0), tiny_wan_vae(0, chunks_per_pass=1)
    x = clip[:1, :24]
    with torch.inference_mode():
        ref = whole_ae.encoder_stream()(x)
        assert ref.shape[1] == 6  # frames 0..20 consumed (1 + 5 chunks), 21..23 pending
        enc = chunked_ae.encoder_stream()
        pieces, start = [], 0
        for size in (1, 2, 5, 0, 9, 7):
            pieces.append(enc(x[:, start : start + size]))
            start += size
        assert [p.shape[1] for p in pieces] == [1, 0, 1, 0, 3, 1]
        assert enc.pending_frames == 3
        torch.testing.assert_close(torch.cat(pieces, dim=1), ref, rtol=1e-4, atol=1e-4)

        frames_ref = whole_ae.decoder_stream()(ref)
        dec = chunked_ae.decoder_stream()
        frames = torch.cat([dec(ref[:, :2]), dec(ref[:, 2:6])], dim=1)
    assert frames.shape[1] == 1 + 4 * 5
    torch.testing.assert_close(frames, frames_ref, rtol=1e-4, atol=1e-4)


def test_streams_sharing_a_model_are_independent_and_reset(ae: WanVAEAutoencoder, clip: torch.Tensor) -> None:
    a, b = clip[:1], clip[1:]
    with torch.inference_mode():
        alone = torch.cat([ae.encoder_stream()(a[:, :12]), ae.encoder_stream()(b[:, :12])])
        sa, sb = ae.encoder_stream(), ae.encoder_stream()
        za1, zb1 = sa(a[:, :12]), sb(b[:, :12])
        torch.testing.assert_close(torch.cat([za1, zb1]), alone, rtol=0, atol=0)
        za2 = sa(a[:, 12:24])
        sb.reset()
        torch.testing.assert_close(sb(a[:, :12]), za1, rtol=0, atol=0)
        assert (sb(a[:, 12:24]) - za2).abs().max() == 0

        da = ae.decoder_stream()
        first = da(za1)
        da.reset()
        torch.testing.assert_close(da(za1), first, rtol=0, atol=0)


def test_from_pretrained_round_trip(
    ae: WanVAEAutoencoder, clip: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ae.vae.save_pretrained(tmp_path / "vae")
    loaded = WanVAEAutoencoder.from_pretrained(tmp_path, subfolder="vae")
    assert loaded.dtype == torch.float32
    _assert_same_weights(ae, loaded)
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.encoder_stream()(clip[:1, :12]), ae.encoder_stream()(clip[:1, :12]), rtol=0, atol=0
        )


def test_rejects_bad_input(ae: WanVAEAutoencoder) -> None:
    enc = ae.encoder_stream()
    with pytest.raises(ValueError, match="multiple of 8"):
        enc(_rand(1, 4, 3, 36, 32, seed=0))
    enc(_rand(1, 3, 3, 32, 32, seed=0))
    with pytest.raises(ValueError, match="reset"):
        enc(_rand(1, 4, 3, 32, 48, seed=0))
    enc.reset()
    enc(_rand(1, 5, 3, 32, 32, seed=0))  # frame 0 + one chunk: nothing pending, the cache still holds 32x32
    with pytest.raises(ValueError, match="reset"):
        enc(_rand(1, 4, 3, 32, 48, seed=0))
    dec = ae.decoder_stream()
    with pytest.raises(ValueError, match="latents"):
        dec(_rand(1, 2, 8, 4, 4, seed=0))
    dec(_rand(1, 1, 16, 4, 4, seed=0))
    with pytest.raises(ValueError, match="reset"):
        dec(_rand(2, 1, 16, 4, 4, seed=0))
