"""Prompt cleaning and tokenizers: the umT5 tokenizer (loaded) and a tiny byte-level one (built in code).

Wan cleans prompts before tokenizing (LIPAR.md §2.6): HTML entities are unescaped and runs of whitespace
collapse to one space, with the ends stripped. :func:`clean_prompt` does the same (Wan additionally runs
``ftfy``; that is not a dependency here).

The tiny tokenizer is a ``tokenizers`` byte-level BPE model with no merges (one token per UTF-8 byte) plus
T5's special tokens (``<pad>`` = 0, ``</s>`` = 1 appended to every sequence, ``<unk>`` = 2), wrapped in a
transformers fast tokenizer. It needs no download and goes through the same ``tokenizer(...)`` call path
(padding, truncation, attention mask, ``save_pretrained`` / ``AutoTokenizer.from_pretrained``) as the real
umT5 tokenizer.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lipar_core.protocol import MAX_PROMPT_CHARS

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_PROMPT_CHARS",
    "TINY_VOCAB_SIZE",
    "build_tiny_tokenizer",
    "clean_prompt",
    "load_tokenizer",
]

# MAX_PROMPT_CHARS (defined with the editor's other limits in lipar_core.protocol, re-exported here): the longest
# accepted prompt, in characters after cleaning. umT5 keeps 512 tokens (a few thousand characters of English);
# longer prompts are truncated to ``max_length`` tokens, and anything past this limit is rejected outright as a
# likely mistake (or abuse of a server).

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
#: 3 special tokens + 256 byte symbols.
TINY_VOCAB_SIZE = len(_SPECIAL_TOKENS) + 256

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: unescape HTML entities (twice), collapse whitespace runs, strip the ends."""
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level tokenizer with T5's special tokens, built locally (no download).

    Every UTF-8 byte is one token (ids 3..258); ``</s>`` (id 1) is appended to each sequence, ``<pad>`` is
    id 0. Different texts give different ids, so different prompts give different embeddings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    if len(vocab) != TINY_VOCAB_SIZE:  # the byte alphabet is always 256 symbols
        raise RuntimeError(f"unexpected byte-level alphabet size {len(vocab) - len(_SPECIAL_TOKENS)}")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eos_id = vocab[EOS_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
    )
    return tokenizer


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` on a local directory (the umT5 tokenizer of a diffusers repo).

    Raises:
        OSError: the directory does not hold a loadable tokenizer (callers convert it).
    """
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    logger.debug("loaded tokenizer %s from %s", type(tokenizer).__name__, directory)
    return tokenizer
