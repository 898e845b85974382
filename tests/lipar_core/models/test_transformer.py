"""The streaming block-causal DiT equals diffusers' own forward (first block) and a full masked forward."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from lipar_core.geometry import StreamGeometry
from lipar_core.models.configs import tiny_transformer_config
from lipar_core.models.transformer import CausalWanDiT

TINY = tiny_transformer_config()


def _model(seed: int = 0) -> CausalWanDiT:
    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**TINY).eval()
    return CausalWanDiT(wan)


class MaskedProcessor:
    """Test-only self-attention processor: diffusers' attention with an explicit boolean mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.inner = WanAttnProcessor()
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


def _block_causal_mask(frames: int, f_block: int, tpf: int, m0: int, m1: int) -> torch.Tensor:
    """[N, N] bool: query frame in block b sees key frames of blocks <= b inside sink + last m1 frames."""
    fq = torch.arange(frames)[:, None]
    fk = torch.arange(frames)[None, :]
    block_end = (fq // f_block + 1) * f_block
    allowed = (fk < block_end) & ((fk < m0) | (fk >= block_end - m1))
    return allowed.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@torch.no_grad()
def test_first_block_equals_diffusers_forward() -> None:
    dit = _model()
    geo = StreamGeometry(height=64, width=96)
    x = torch.randn(1, 3, 16, geo.latent_height, geo.latent_width)
    text = torch.randn(1, 7, TINY["text_dim"])
    cache = dit.new_cache(geo, sink_frames=1, window_frames=8, train_frames=21)
    ctx = dit.begin_block(cache, 0)
    ours = dit.forward_block(x, [700.0] * 3, cache, dit.text_kv(text), ctx)
    ref = dit.wan(x.permute(0, 2, 1, 3, 4), torch.tensor([700.0]), text, return_dict=False)[0]
    assert _rel(ours, ref.permute(0, 2, 1, 3, 4)) <= 1e-5


@pytest.mark.parametrize(("m0", "m1", "blocks"), [(1, 5, 4), (0, 21, 3), (2, 6, 4)])
@torch.no_grad()
def test_streaming_equals_full_block_causal_forward(m0: int, m1: int, blocks: int) -> None:
    """Teacher-forced streaming (each block's input written to the cache) == one masked full forward."""
    dit = _model(1)
    geo = StreamGeometry(height=32, width=48)
    f = geo.latent_frames_per_block
    frames = f * blocks
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, frames, 16, geo.latent_height, geo.latent_width, generator=gen)
    t = torch.rand(frames, generator=gen) * 1000  # a different timestep per frame
    text = torch.randn(1, 5, TINY["text_dim"], generator=gen)
    cross = dit.text_kv(text)
    cache = dit.new_cache(geo, sink_frames=m0, window_frames=m1, train_frames=21)
    outs = []
    for bi in range(blocks):
        ctx = dit.begin_block(cache, bi * f)
        sl = slice(bi * f, (bi + 1) * f)
        outs.append(dit.forward_block(x[:, sl], t[sl].tolist(), cache, cross, ctx))
    ours = torch.cat(outs, dim=1)

    mask = _block_causal_mask(frames, f, geo.tokens_per_frame, m0, m1)
    dit.wan.set_attn_processor(
        {f"blocks.{i}.attn1.processor": MaskedProcessor(mask) for i in range(2)}
        | {
            f"blocks.{i}.attn2.processor": MaskedProcessor(None)
            for i in range(2)  # type: ignore[arg-type]
        }
    )
    tok_t = t.repeat_interleave(geo.tokens_per_frame)[None]
    ref = dit.wan(x.permute(0, 2, 1, 3, 4), tok_t, text, return_dict=False)[0].permute(0, 2, 1, 3, 4)
    for bi in range(blocks):
        sl = slice(bi * f, (bi + 1) * f)
        assert _rel(ours[:, sl], ref[:, sl]) <= 1e-4, f"block {bi}"
    # The window must matter: without eviction the last block would differ (guards against a no-op mask).
    if m1 < frames - m0:
        full = _block_causal_mask(frames, f, geo.tokens_per_frame, frames, frames)
        dit.wan.set_attn_processor(
            {f"blocks.{i}.attn1.processor": MaskedProcessor(full) for i in range(2)}
            | {
                f"blocks.{i}.attn2.processor": MaskedProcessor(None)
                for i in range(2)  # type: ignore[arg-type]
            }
        )
        unwindowed = dit.wan(x.permute(0, 2, 1, 3, 4), tok_t, text, return_dict=False)[0].permute(
            0, 2, 1, 3, 4
        )
        assert _rel(ours[:, -f:], unwindowed[:, -f:]) > 1e-3


def _reference_clamped_stream(
    dit: CausalWanDiT, xs: list[torch.Tensor], t: float, text: torch.Tensor, m0: int, m1: int, train: int
) -> list[torch.Tensor]:
    """Literal reference of LIPAR.md §2.7: every cached frame keeps its un-rotated K; a block starting at frame
    p is placed at temporal position min(p, train - F) (the clamp), window frames are shifted back by the same
    amount, the sink stays at position 0. Written independently of the ring-buffer cache."""
    import torch.nn.functional as Fn

    from lipar_core.models.rope import apply_rope

    wan = dit.wan
    f = xs[0].shape[1]
    gh, gw = xs[0].shape[-2] // 2, xs[0].shape[-1] // 2
    tpf = gh * gw
    raw_k: list[dict[int, torch.Tensor]] = [{} for _ in wan.blocks]
    vals: list[dict[int, torch.Tensor]] = [{} for _ in wan.blocks]
    cross = dit.text_kv(text)
    temb, mod = dit._time_embed((t,) * f, xs[0])
    outs = []
    for bi, x in enumerate(xs):
        p = bi * f
        shift = max(0, p + f - train)
        hs = wan.patch_embedding(x.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2)
        qcos, qsin = dit.rope.grid_tables(torch.arange(p, p + f) - shift, gh, gw)
        visible = sorted({g for g in range(p + f) if g < m0 or g >= p + f - m1})
        for li, block in enumerate(wan.blocks):
            sm, scm, gm, cs, csc, cg = (block.scale_shift_table + mod[:1]).unsqueeze(0).unbind(2)
            a1 = block.attn1
            nx = block.norm1(hs) * (1 + scm) + sm
            q = apply_rope(a1.norm_q(a1.to_q(nx)).unflatten(-1, (dit.heads, -1)), qcos, qsin)
            k = a1.norm_k(a1.to_k(nx)).unflatten(-1, (dit.heads, -1))
            v = a1.to_v(nx).unflatten(-1, (dit.heads, -1))
            for j in range(f):
                raw_k[li][p + j] = k[:, j * tpf : (j + 1) * tpf]
                vals[li][p + j] = v[:, j * tpf : (j + 1) * tpf]
            ks, vs = [], []
            for g in visible:
                pos = g if g < m0 else g - shift
                c, s = dit.rope.grid_tables(torch.tensor([pos]), gh, gw)
                ks.append(apply_rope(raw_k[li][g], c, s))
                vs.append(vals[li][g])
            att = Fn.scaled_dot_product_attention(
                q.transpose(1, 2), torch.cat(ks, 1).transpose(1, 2), torch.cat(vs, 1).transpose(1, 2)
            )
            hs = hs + a1.to_out[0](att.transpose(1, 2).flatten(2)) * gm
            a2 = block.attn2
            q2 = a2.norm_q(a2.to_q(block.norm2(hs))).unflatten(-1, (dit.heads, -1)).transpose(1, 2)
            att2 = Fn.scaled_dot_product_attention(q2, cross.k[li], cross.v[li])
            hs = hs + a2.to_out[0](att2.transpose(1, 2).flatten(2))
            hs = hs + block.ffn(block.norm3(hs) * (1 + csc) + cs) * cg
        sh, sc = (wan.scale_shift_table + temb[:1].unsqueeze(1)).unsqueeze(0).unbind(2)
        o = wan.proj_out(wan.norm_out(hs) * (1 + sc) + sh)
        o = o.reshape(1, f, gh, gw, 1, 2, 2, -1).permute(0, 1, 4, 7, 2, 5, 3, 6)
        outs.append(o.reshape(x.shape))
    return outs


@torch.no_grad()
@pytest.mark.parametrize(("m0", "m1", "train"), [(1, 4, 6), (2, 5, 9), (0, 6, 6)])
def test_sink_rerotation_equals_reference_clamp(m0: int, m1: int, train: int) -> None:
    """Past the training length, moving only the sink gives exactly the clamped reference's attention."""
    dit = _model(2)
    geo = StreamGeometry(height=32, width=32)
    gen = torch.Generator().manual_seed(5)
    blocks = 6  # 18 latent frames: well past train_frames, the clamp is active for most blocks
    xs = [torch.randn(1, 3, 16, 4, 4, generator=gen) for _ in range(blocks)]
    text = torch.randn(1, 5, TINY["text_dim"], generator=gen)
    cache = dit.new_cache(geo, sink_frames=m0, window_frames=m1, train_frames=train)
    cross = dit.text_kv(text)
    ours = []
    for bi, x in enumerate(xs):
        ctx = dit.begin_block(cache, bi * 3)
        ours.append(dit.forward_block(x, [500.0] * 3, cache, cross, ctx))
    ref = _reference_clamped_stream(dit, xs, 500.0, text, m0, m1, train)
    for bi in range(blocks):
        assert _rel(ours[bi], ref[bi]) <= 1e-4, f"block {bi}"
    # Without the clamp (absolute positions for the sink) the late blocks would differ: the test can fail.
    if m0:
        cache2 = dit.new_cache(geo, sink_frames=m0, window_frames=m1, train_frames=10_000)
        late = None
        for bi, x in enumerate(xs):
            ctx = dit.begin_block(cache2, bi * 3)
            late = dit.forward_block(x, [500.0] * 3, cache2, cross, ctx)
        assert late is not None and _rel(late, ref[-1]) > 1e-4
