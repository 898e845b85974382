"""Tests for the prompt encoder (tiny umT5 + local byte-level tokenizer, same code path as the real one)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

from lipar_core.checkpoints import CheckpointNotFoundError
from lipar_core.text.encoder import PromptEncoder
from lipar_core.text.tokenizer import MAX_PROMPT_CHARS, TINY_VOCAB_SIZE, build_tiny_tokenizer, clean_prompt

TEXT_DIM = 16
MAX_LEN = 24


@pytest.fixture
def enc() -> PromptEncoder:
    return PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN, cache_size=8)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def count_encoder_calls(enc: PromptEncoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the encoder's forward; returns a list that grows by the batch size on each call."""
    calls: list[int] = []
    original = enc.encoder.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(enc.encoder, "forward", spy)
    return calls


def n_tokens(prompt: str) -> int:
    """Real token count of the tiny tokenizer: one per UTF-8 byte of the cleaned prompt, plus </s>."""
    return len(clean_prompt(prompt).encode("utf-8")) + 1


def test_shape_padding_is_zero_real_positions_are_not(enc: PromptEncoder) -> None:
    prompt = "a red fox in the snow"
    emb = enc.encode(prompt)
    n = n_tokens(prompt)
    assert emb.shape == (1, MAX_LEN, TEXT_DIM) and emb.dtype == torch.float32
    assert torch.all(emb[0, n:] == 0)
    assert torch.all(emb[0, :n].abs().sum(dim=-1) > 0)


def test_real_positions_equal_a_masked_encoder_run(enc: PromptEncoder) -> None:
    prompt = "  a   cat\n\tsleeping  "
    n = n_tokens(prompt)
    batch = enc.tokenizer(
        [clean_prompt(prompt)], padding="max_length", max_length=MAX_LEN, return_tensors="pt"
    )
    assert int(batch["attention_mask"].sum()) == n
    with torch.no_grad():
        direct = enc.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    emb = enc.encode(prompt)
    torch.testing.assert_close(emb[0, :n], direct[0, :n], rtol=0, atol=0)
    # the padding positions of the raw encoder output are not zero: the zeroing is ours
    assert direct[0, n:].abs().sum() > 0


def test_whitespace_cleaning_shares_the_cache(enc: PromptEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_encoder_calls(enc, monkeypatch)
    a = enc.encode("a red  fox")
    b = enc.encode("  a\n red\tfox   ")
    assert torch.equal(a, b) and calls == [1]
    assert clean_prompt("a &amp;amp; b\u00a0\u00a0c") == "a & b c"


def test_deterministic_and_prompt_dependent(enc: PromptEncoder) -> None:
    state = torch.random.get_rng_state()
    same = PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN)
    other_seed = PromptEncoder.tiny(TEXT_DIM, seed=1, max_length=MAX_LEN)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG side effect
    a, b = enc.encode("a red fox"), enc.encode("a red box")
    assert torch.equal(a, same.encode("a red fox"))
    assert (a - b).abs().max() > 1e-3
    assert (a - other_seed.encode("a red fox")).abs().max() > 1e-3
    assert len(enc.tokenizer) == TINY_VOCAB_SIZE == enc.encoder.config.vocab_size


def test_lru_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN, cache_size=2)
    calls = count_encoder_calls(enc, monkeypatch)
    first = enc.encode("alpha")
    again = enc.encode("alpha")
    assert calls == [1] and enc.encoder_runs == 1
    assert torch.equal(first, again) and first.data_ptr() != again.data_ptr()
    again.fill_(7.0)  # callers may modify what they get: the cache is unaffected
    assert torch.equal(enc.encode("alpha"), first)
    enc.encode("beta")
    enc.encode("alpha")  # alpha becomes most recent
    enc.encode("gamma")  # evicts beta
    assert len(calls) == 3 and enc.cache_len() == 2
    enc.encode("alpha")
    assert len(calls) == 3
    enc.encode("beta")
    assert len(calls) == 4
    enc.clear_cache()
    enc.encode("alpha")
    assert len(calls) == 5


def test_cache_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN, cache_size=0)
    calls = count_encoder_calls(enc, monkeypatch)
    a, b = enc.encode("x"), enc.encode("x")
    assert torch.equal(a, b) and calls == [1, 1] and enc.cache_len() == 0


def test_encode_many_batches_misses(enc: PromptEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    single = {p: enc.encode(p) for p in ("one", "two")}
    calls = count_encoder_calls(enc, monkeypatch)
    out = enc.encode_many(["one", "three", "two", "three", "four"])
    assert out.shape == (5, MAX_LEN, TEXT_DIM)
    assert calls == [2]  # "three" and "four" in one batch; cached ones and duplicates not re-run
    assert torch.equal(out[0], single["one"][0]) and torch.equal(out[2], single["two"][0])
    assert torch.equal(out[1], out[3])
    fresh = PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN)
    torch.testing.assert_close(out[4], fresh.encode("four")[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError):
        enc.encode_many("one")
    with pytest.raises(ValueError):
        enc.encode_many([])


def test_device_and_dtype(enc: PromptEncoder) -> None:
    base = enc.encode("a fox")
    half = enc.encode("a fox", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    torch.testing.assert_close(half.float(), base, rtol=1e-2, atol=1e-2)
    bf = PromptEncoder.tiny(TEXT_DIM, seed=0, max_length=MAX_LEN, dtype=torch.bfloat16)
    emb = bf.encode("a fox")
    assert emb.dtype == torch.bfloat16 and torch.all(emb[0, n_tokens("a fox") :] == 0)


def test_thread_safe_each_prompt_encoded_once(enc: PromptEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_encoder_calls(enc, monkeypatch)
    prompts = [f"prompt number {i % 4}" for i in range(24)]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = enc.encode(prompts[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 4
    for i in range(len(prompts)):
        assert torch.equal(results[i], results[i % 4])


def test_invalid_prompts(enc: PromptEncoder) -> None:
    for bad in ("", "   ", "\n\t "):
        with pytest.raises(ValueError, match="empty"):
            enc.encode(bad)
    with pytest.raises(ValueError, match="limit"):
        enc.encode("x" * (MAX_PROMPT_CHARS + 1))
    enc.encode("x" * 100)  # long but allowed: truncated to max_length tokens
    with pytest.raises(TypeError):
        enc.encode(None)  # type: ignore[arg-type]


def test_truncation_is_logged(enc: PromptEncoder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lipar_core.text.encoder"):
        emb = enc.encode("y" * (MAX_LEN + 5))
    assert "truncated" in caplog.text
    assert torch.all(emb[0].abs().sum(dim=-1) > 0)  # every position is a real token
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lipar_core.text.encoder"):
        enc.encode("y" * (MAX_LEN - 1))  # exactly max_length tokens with </s>: not truncated
    assert "truncated" not in caplog.text


def test_save_and_from_pretrained_offline(enc: PromptEncoder, offline: None, tmp_path: Path) -> None:
    enc.save_pretrained(tmp_path / "repo")
    loaded = PromptEncoder.from_pretrained(tmp_path / "repo", max_length=MAX_LEN, cache_size=4)
    for prompt in ("a red fox", "something else entirely"):
        assert torch.equal(loaded.encode(prompt), enc.encode(prompt))
    assert loaded.text_dim == TEXT_DIM and loaded.cache_size == 4


def test_from_pretrained_hub_id_offline_uses_the_cache(
    enc: PromptEncoder, offline: None, tmp_path: Path
) -> None:
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo_dir = tmp_path / "cache" / "models--owner--tiny-wan"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    enc.save_pretrained(repo_dir / "snapshots" / commit)
    loaded = PromptEncoder.from_pretrained(
        "owner/tiny-wan", cache_dir=str(tmp_path / "cache"), max_length=MAX_LEN
    )
    assert torch.equal(loaded.encode("a red fox"), enc.encode("a red fox"))


def test_from_pretrained_errors(enc: PromptEncoder, offline: None, tmp_path: Path) -> None:
    empty_cache = tmp_path / "empty"
    empty_cache.mkdir()
    with pytest.raises(CheckpointNotFoundError) as info:
        PromptEncoder.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", cache_dir=str(empty_cache))
    msg = str(info.value)
    assert "text_encoder" in msg and str(empty_cache) in msg and "HF_HUB_OFFLINE is set" in msg
    assert "hf download" in msg

    repo = tmp_path / "repo"
    enc.save_pretrained(repo)
    for f in (repo / "tokenizer").iterdir():
        f.unlink()
    (repo / "tokenizer").rmdir()
    with pytest.raises(CheckpointNotFoundError, match="tokenizer") as info:
        PromptEncoder.from_pretrained(repo)
    assert str(repo / "tokenizer") in str(info.value)

    (repo / "tokenizer").mkdir()
    (repo / "tokenizer" / "README.txt").write_text("not a tokenizer")
    with pytest.raises(CheckpointNotFoundError, match="could not load a tokenizer") as info:
        PromptEncoder.from_pretrained(repo)
    assert "\n" not in str(info.value)

    enc.tokenizer.save_pretrained(repo / "tokenizer")
    weights = repo / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    del state["encoder.block.1.layer.0.SelfAttention.q.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(
        CheckpointNotFoundError, match=r"lacks 1 parameter.*block\.1\.layer\.0\.SelfAttention\.q"
    ):
        PromptEncoder.from_pretrained(repo)
    weights.unlink()
    with pytest.raises(CheckpointNotFoundError, match="could not load a UMT5EncoderModel") as info:
        PromptEncoder.from_pretrained(repo)
    assert str(repo / "text_encoder") in str(info.value)
    (repo / "text_encoder" / "config.json").unlink()
    (repo / "text_encoder" / "README.md").write_text("no config here")
    with pytest.raises(CheckpointNotFoundError, match=r"no config\.json"):
        PromptEncoder.from_pretrained(repo)


def test_tiny_tokenizer_round_trip() -> None:
    tok = build_tiny_tokenizer()
    ids = tok("héllo wörld", add_special_tokens=True)["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert len(ids) == len("héllo wörld".encode()) + 1
    assert tok.decode(ids, skip_special_tokens=True) == "héllo wörld"
