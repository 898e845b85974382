"""The prompt encoder: umT5 encoder + tokenizer, Wan-style zero padding, and a per-prompt LRU cache.

Wan / Self-Forcing encode a prompt once (LIPAR.md §2.6): the cleaned prompt is tokenized to exactly
``max_length`` (512) tokens with ``</s>`` appended, the umT5 encoder runs with the attention mask, and every
position past the real token count is set to exactly 0. The DiT then attends to all 512 positions,
including the zeroed padding.

:class:`PromptEncoder` does this for the real ``google/umt5-xxl`` encoder (from a diffusers-format Wan repo,
:meth:`PromptEncoder.from_pretrained`) and for a tiny random one used in tests and the ``tiny`` preset
(:meth:`PromptEncoder.tiny`). Both take the same code path.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from lipar_core.checkpoints import CheckpointNotFoundError, resolve_repo_dir
from lipar_core.text.tokenizer import (
    MAX_PROMPT_CHARS,
    build_tiny_tokenizer,
    clean_prompt,
    load_tokenizer,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_LENGTH", "PromptEncoder"]

#: Wan's text length in tokens.
DEFAULT_MAX_LENGTH = 512
_HOW_TO_GET = (
    "download the diffusers-format Wan2.1 repo's text encoder and tokenizer, e.g. "
    "`hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include 'text_encoder/*' 'tokenizer/*'`, "
    "or set model.text.repo to a local directory with those subfolders, or use model.text.kind: tiny"
)


def _dtype_kwarg(dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained`` dtype keyword: ``dtype`` (transformers ≥ 4.56) or ``torch_dtype`` (older)."""
    import transformers
    from packaging.version import Version

    value: torch.dtype | str = dtype if dtype is not None else "auto"
    if Version(transformers.__version__) >= Version("4.56"):
        return {"dtype": value}
    return {"torch_dtype": value}


class PromptEncoder:
    """umT5 prompt encoder with Wan's zero padding and a thread-safe per-prompt LRU cache.

    Args:
        tokenizer: a transformers tokenizer (padding is forced to the right, as Wan assumes).
        encoder: a ``transformers.UMT5EncoderModel`` (any device / dtype; it is put in eval mode).
        max_length: tokens per prompt (padded / truncated to it); Wan uses 512.
        cache_size: prompts kept in the LRU cache (0 disables caching).
        device: default device of returned embeddings (None: the encoder's device).
        dtype: default dtype of returned embeddings (None: the encoder's dtype).
        max_prompt_chars: longest accepted prompt after cleaning (:data:`MAX_PROMPT_CHARS`).

    Returned embeddings are [N, max_length, text_dim] (text_dim = ``encoder.config.d_model``, 4096 for
    umT5-XXL); rows past each prompt's token count (including ``</s>``) are exactly zero. Each call returns
    a fresh tensor: modifying it never changes the cache.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoder: UMT5EncoderModel,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_size: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.max_prompt_chars = int(max_prompt_chars)
        #: number of encoder forward passes run so far (cache hits do not count).
        self.encoder_runs = 0
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._run_lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    @property
    def text_dim(self) -> int:
        """Width of the embeddings (``d_model`` of the encoder)."""
        return int(self.encoder.config.d_model)

    @property
    def encoder_device(self) -> torch.device:
        """Device the encoder weights are on."""
        return next(self.encoder.parameters()).device

    @property
    def encoder_dtype(self) -> torch.dtype:
        """Dtype of the encoder weights."""
        return next(self.encoder.parameters()).dtype

    def cache_len(self) -> int:
        """Number of prompts currently cached."""
        with self._cache_lock:
            return len(self._cache)

    def clear_cache(self) -> None:
        """Drop every cached embedding."""
        with self._cache_lock:
            self._cache.clear()

    # ------------------------------------------------------------------ encoding
    def prepare_prompt(self, prompt: str) -> str:
        """The cleaned prompt (the cache key).

        Raises:
            TypeError: ``prompt`` is not a str.
            ValueError: the prompt is empty after cleaning or longer than ``max_prompt_chars``.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        cleaned = clean_prompt(prompt)
        if not cleaned:
            raise ValueError("the prompt is empty (or only whitespace)")
        if len(cleaned) > self.max_prompt_chars:
            raise ValueError(
                f"the prompt has {len(cleaned)} characters, more than the limit of {self.max_prompt_chars}"
            )
        return cleaned

    def encode(
        self, prompt: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Embed one prompt.

        Returns:
            [1, max_length, text_dim] on ``device`` / ``dtype`` (defaults: the constructor's, else the
            encoder's); positions past the real token count are 0.
        """
        return self.encode_many([prompt], device=device, dtype=dtype)

    def encode_many(
        self,
        prompts: Sequence[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Embed several prompts; uncached ones go through the encoder in one batch.

        Returns:
            [len(prompts), max_length, text_dim] on ``device`` / ``dtype``.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_many takes a sequence of prompts, not a single str (use encode)")
        if len(prompts) == 0:
            raise ValueError("encode_many needs at least one prompt")
        keys = [self.prepare_prompt(p) for p in prompts]
        found = self._lookup(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            with self._run_lock:
                # another thread may have encoded some of them meanwhile
                found.update(self._lookup(missing))
                todo = [k for k in missing if k not in found]
                if todo:
                    fresh = self._run_encoder(todo)
                    for k, emb in zip(todo, fresh, strict=True):
                        found[k] = emb
                    self._store(dict(zip(todo, fresh, strict=True)))
        out_device = torch.device(device) if device is not None else (self.device or self.encoder_device)
        out_dtype = dtype or self.dtype or self.encoder_dtype
        # torch.stack allocates a new tensor: the cached ones are never handed out
        return torch.stack([found[k] for k in keys]).to(device=out_device, dtype=out_dtype)

    def _lookup(self, keys: Sequence[str]) -> dict[str, Tensor]:
        hits: dict[str, Tensor] = {}
        with self._cache_lock:
            for k in keys:
                emb = self._cache.get(k)
                if emb is not None:
                    self._cache.move_to_end(k)
                    hits[k] = emb
        return hits

    def _store(self, items: Mapping[str, Tensor]) -> None:
        if self.cache_size == 0:
            return
        with self._cache_lock:
            for k, emb in items.items():
                self._cache[k] = emb
                self._cache.move_to_end(k)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    @torch.inference_mode()
    def _run_encoder(self, prompts: list[str]) -> list[Tensor]:
        """Tokenize and encode cleaned prompts; returns one [max_length, text_dim] tensor per prompt."""
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        dev = self.encoder_device
        ids: Tensor = batch["input_ids"].to(dev)  # [N, L]
        mask: Tensor = batch["attention_mask"].to(dev)  # [N, L], 1 = real token
        for prompt, n_real in zip(prompts, mask.sum(dim=1).tolist(), strict=True):
            if n_real >= self.max_length:
                full = len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
                if full > self.max_length:
                    logger.warning(
                        "prompt truncated from %d to %d tokens: %.60s...", full, self.max_length, prompt
                    )
        hidden: Tensor = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, L, D]
        hidden = hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        self.encoder_runs += 1
        logger.debug("encoded %d prompt(s) → %s", len(prompts), tuple(hidden.shape))
        # inference tensors → plain tensors, one independent tensor per prompt
        return [h.clone() for h in hidden]

    # ------------------------------------------------------------------ construction
    def save_pretrained(
        self,
        directory: str | Path,
        encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
    ) -> Path:
        """Write the encoder and tokenizer in the diffusers repo layout (``text_encoder/``, ``tokenizer/``)."""
        root = Path(directory)
        self.encoder.save_pretrained(str(root / encoder_subfolder))
        self.tokenizer.save_pretrained(str(root / tokenizer_subfolder))
        return root

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | Path,
        encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_size: int = 64,
        revision: str | None = None,
    ) -> PromptEncoder:
        """Load the umT5 encoder and tokenizer from a diffusers-format repo (Hub id) or local directory.

        Hub ids go through :func:`lipar_core.checkpoints.resolve_repo_dir` (only the two subfolders are
        fetched; ``HF_HUB_OFFLINE=1`` uses the cache only), then both are loaded from disk with
        ``UMT5EncoderModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

        Args:
            repo_or_dir: Hub id (e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or a local directory.
            encoder_subfolder, tokenizer_subfolder: folders inside it.
            device: where the encoder runs (default CPU); embeddings are returned there by default.
            dtype: encoder weight dtype (None: as stored in the checkpoint).
            cache_dir: Hub cache directory (None: huggingface_hub's default).
            max_length, cache_size: see the class.
            revision: Hub branch, tag or commit.

        Raises:
            CheckpointNotFoundError: the repo, a subfolder, or loadable files in it are missing.
        """
        what = "the umT5 text encoder"
        root = resolve_repo_dir(
            str(repo_or_dir),
            encoder_subfolder,
            cache_dir,
            what,
            _HOW_TO_GET,
            allow_patterns=[f"{encoder_subfolder}/*", f"{tokenizer_subfolder}/*"],
            revision=revision,
        )
        # the tokenizer folder must be there too (same snapshot / directory)
        resolve_repo_dir(str(root), tokenizer_subfolder, None, "the umT5 tokenizer", _HOW_TO_GET)
        enc_dir, tok_dir = root / encoder_subfolder, root / tokenizer_subfolder

        def fail(missing: str, where: Path, reason: str, err: BaseException | None = None) -> NoReturn:
            raise CheckpointNotFoundError.build(
                what="the umT5 tokenizer" if where == tok_dir else what,
                missing=missing,
                places=[f"local path {where}"],
                reason=reason,
                how_to_get=_HOW_TO_GET,
                hub=False,
            ) from err

        try:
            tokenizer = load_tokenizer(tok_dir)
        except (OSError, ValueError) as err:
            fail(
                f"tokenizer files in {tok_dir}",
                tok_dir,
                f"transformers could not load a tokenizer there ({type(err).__name__}: {err})",
                err,
            )
        # without config.json transformers would silently build a default-sized model
        if not (enc_dir / "config.json").is_file():
            fail(f"the encoder config {enc_dir / 'config.json'}", enc_dir, "there is no config.json")
        try:
            loaded: Any = UMT5EncoderModel.from_pretrained(
                str(enc_dir), output_loading_info=True, **_dtype_kwarg(dtype)
            )
        except (OSError, ValueError, RuntimeError) as err:
            fail(
                f"encoder weights in {enc_dir}",
                enc_dir,
                f"transformers could not load a UMT5EncoderModel there ({type(err).__name__}: {err})",
                err,
            )
        encoder: UMT5EncoderModel = loaded[0]
        info: dict[str, Any] = loaded[1]
        missing = sorted(info.get("missing_keys") or ())
        if missing:  # a partial download would otherwise leave randomly initialised layers
            fail(
                f"encoder weights in {enc_dir}",
                enc_dir,
                f"the checkpoint lacks {len(missing)} parameter(s), e.g. {missing[:5]}",
            )
        target = torch.device(device) if device is not None else torch.device("cpu")
        torch.nn.Module.to(encoder, target)
        logger.info(
            "loaded text encoder from %s (d_model=%d, %s, %s)",
            root,
            encoder.config.d_model,
            next(encoder.parameters()).dtype,
            target,
        )
        return cls(tokenizer, encoder, max_length=max_length, cache_size=cache_size, device=target)

    @classmethod
    def tiny(
        cls,
        text_dim: int,
        seed: int = 0,
        max_length: int = DEFAULT_MAX_LENGTH,
        *,
        cache_size: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        num_layers: int = 2,
        num_heads: int = 2,
        config: Mapping[str, Any] | None = None,
    ) -> PromptEncoder:
        """A tiny random umT5 encoder (d_model = ``text_dim``) with the local byte-level tokenizer.

        The weights depend only on ``seed`` (and the config); the global torch RNG state is left as it
        was. ``config`` overrides any ``UMT5Config`` field.
        """
        if text_dim < 1:
            raise ValueError(f"text_dim must be positive, got {text_dim}")
        tokenizer = build_tiny_tokenizer()
        params: dict[str, Any] = {
            "vocab_size": len(tokenizer),
            "d_model": text_dim,
            "d_kv": max(1, text_dim // num_heads),
            "d_ff": 2 * text_dim,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 32,
            "dropout_rate": 0.0,
            "feed_forward_proj": "gated-gelu",
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.pad_token_id,
            "use_cache": False,
        }
        params.update(config or {})
        umt5_config = UMT5Config(**params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = UMT5EncoderModel(umt5_config)
        target = torch.device(device) if device is not None else torch.device("cpu")
        torch.nn.Module.to(encoder, device=target, dtype=dtype or torch.float32)
        return cls(tokenizer, encoder, max_length=max_length, cache_size=cache_size, device=target)
