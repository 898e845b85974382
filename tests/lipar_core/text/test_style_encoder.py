"""The style prompt encoder: paraphrases and typos reach their edit, unknown prompts fall back to original."""

from __future__ import annotations

import pytest
import torch

from lipar_core.text.style_encoder import ORIGINAL, StyleTextEncoder, clean_words, prompt_features

VOCAB = {
    "pencil_sketch": ("pencil sketch", "a pencil drawing", "graphite sketch", "hand-drawn sketch on paper"),
    "thermal": ("thermal camera", "infrared heat vision", "heat map", "thermal imaging"),
    "negative": ("negative", "inverted colors", "photo negative", "invert the colours"),
    "sepia_film": ("sepia film", "old sepia photograph", "vintage brown film", "antique photo"),
}


def _encoder(**kw: float) -> StyleTextEncoder:
    emb = torch.randn(len(VOCAB) + 1, 4, 8, generator=torch.Generator().manual_seed(0))
    return StyleTextEncoder(VOCAB, emb, **kw)


def test_features_are_stable_and_normalised() -> None:
    a = prompt_features("Pencil sketch!", 512)
    assert torch.equal(a, prompt_features("pencil   SKETCH", 512))  # case, punctuation, spacing
    assert float(a.norm()) == pytest.approx(1.0)
    assert float(prompt_features("a the style", 512).norm()) == 0.0  # only stop words
    assert clean_words("Make it look like a Pencil-sketch") == ["pencil", "sketch"]


@pytest.mark.parametrize(
    ("prompt", "style"),
    [
        ("pencil sketch", "pencil_sketch"),
        ("make it a pencil drawing", "pencil_sketch"),
        ("pencil skech", "pencil_sketch"),  # typo
        ("sketch in graphite", "pencil_sketch"),
        ("thermal", "thermal"),
        ("infrared camera", "thermal"),
        ("heat vision", "thermal"),
        ("invert colors", "negative"),
        ("film negative", "negative"),
        ("sepia", "sepia_film"),
        ("an old antique photograph", "sepia_film"),
    ],
)
def test_paraphrases_select_their_edit(prompt: str, style: str) -> None:
    enc = _encoder()
    m = enc.match(prompt)
    assert m.known and m.style == style, (prompt, m, enc.scores(prompt))
    w = enc.weights(prompt)
    assert int(w.argmax()) == enc.names.index(style)
    assert float(w.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("prompt", ["a cat riding a bicycle", "zzz", "", "make it look nice"])
def test_unknown_prompts_fall_back_to_original(prompt: str) -> None:
    enc = _encoder()
    m = enc.match(prompt)
    assert not m.known and m.style == ORIGINAL
    assert torch.equal(enc.encode(prompt)[0], enc.embeddings[-1])


def test_canonical_prompt_gives_its_embedding() -> None:
    enc = _encoder()
    for i, (name, prompts) in enumerate(VOCAB.items()):
        e = enc.encode(prompts[0])
        assert e.shape == (1, 4, 8)
        # the softmax is sharp: the mixture is (almost) the edit's own embedding
        assert torch.allclose(e[0], enc.embeddings[i], atol=1e-3), name


def test_state_round_trip_and_validation() -> None:
    enc = _encoder()
    tensors, meta = enc.state()
    back = StyleTextEncoder.from_state(tensors, meta)
    assert back.known_prompts() == enc.known_prompts()
    for p in ("graphite sketch", "heat map", "blah"):
        assert torch.equal(back.encode(p), enc.encode(p))
    with pytest.raises(ValueError, match="missing"):
        StyleTextEncoder.from_state(tensors, {})
    with pytest.raises(ValueError, match="reserved"):
        StyleTextEncoder({ORIGINAL: ("x",)}, torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="one per edit"):
        StyleTextEncoder(VOCAB, torch.zeros(len(VOCAB), 1, 1))
