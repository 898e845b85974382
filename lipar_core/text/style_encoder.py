"""A small prompt encoder for a model trained on a fixed vocabulary of styles (the embedded demo model).

The demo model learns a handful of edits, each named by a few prompts ("pencil sketch", "a pencil drawing",
...). Instead of a language model, this encoder matches the typed prompt against that vocabulary and returns
the learned conditioning of the matched edit:

1. Features: the cleaned prompt's words (minus stop words such as "a", "style", "make it") and the character
   3-grams of each word, hashed (CRC-32, stable across processes) into ``feature_dim`` buckets and
   L2-normalised. Close paraphrases and typos share most features.
2. Score of an edit: the best cosine similarity between the prompt's features and those of any of its known
   prompts.
3. Conditioning: a softmax over the scores (temperature ``temperature``) mixes the edits' learned embeddings
   ([edits, L, text_dim], trained with the model). Below ``min_score`` the prompt is unknown and the
   encoder returns the embedding of the ``original`` edit (the model's pass-through), so an unknown prompt
   leaves the video as it is instead of producing an arbitrary style.

The vocabulary (edit names and prompts) is saved with the embeddings, so a weights file describes itself:
:meth:`StyleTextEncoder.state` / :meth:`StyleTextEncoder.from_state`.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ORIGINAL = "original"
"""Name of the pass-through edit that unknown prompts fall back to."""

_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "in",
        "of",
        "on",
        "to",
        "with",
        "as",
        "into",
        "like",
        "style",
        "styled",
        "look",
        "looking",
        "make",
        "made",
        "me",
        "my",
        "it",
        "its",
        "please",
        "turn",
        "this",
        "that",
        "video",
        "image",
        "picture",
        "photo",
        "shot",
        "effect",
        "filter",
        "render",
        "rendered",
        "version",
    ]
)
_NON_WORD = re.compile(r"[^a-z0-9]+")


def clean_words(prompt: str) -> list[str]:
    """Lowercase words of ``prompt`` without punctuation and stop words."""
    return [w for w in _NON_WORD.sub(" ", prompt.lower()).split() if w not in _STOP_WORDS]


def prompt_features(prompt: str, feature_dim: int) -> Tensor:
    """Hashed bag of words and character 3-grams, L2-normalised: [feature_dim] float32 (zeros if empty)."""
    v = torch.zeros(feature_dim)
    for word in clean_words(prompt):
        v[zlib.crc32(b"w:" + word.encode()) % feature_dim] += 1.0
        padded = f" {word} "
        for i in range(len(padded) - 2):
            v[zlib.crc32(b"c:" + padded[i : i + 3].encode()) % feature_dim] += 0.5
    n = v.norm()
    return v / n if n > 0 else v


@dataclass(frozen=True)
class StyleMatch:
    """How a prompt was understood: the best edit, its score in [0, 1], and whether it was recognised."""

    style: str
    score: float
    known: bool


class StyleTextEncoder:
    """Prompt -> conditioning for a fixed vocabulary of edits (see the module docstring).

    Args:
        vocabulary: edit name -> its prompts (canonical first). Must not contain :data:`ORIGINAL`.
        embeddings: [len(vocabulary) + 1, L, text_dim]: one learned embedding per edit in vocabulary order,
            then the ``original`` (pass-through) edit last.
        feature_dim: hash buckets of the prompt features.
        min_score: prompts whose best score is below this are unknown (-> ``original``).
        temperature: softmax temperature over the edits' scores.
        device: where :meth:`encode` returns embeddings.
    """

    def __init__(
        self,
        vocabulary: Mapping[str, Sequence[str]],
        embeddings: Tensor,
        feature_dim: int = 4096,
        min_score: float = 0.45,
        temperature: float = 0.03,
        device: torch.device | str = "cpu",
    ) -> None:
        if ORIGINAL in vocabulary:
            raise ValueError(f"'{ORIGINAL}' is reserved for the pass-through edit")
        if not vocabulary or any(len(p) == 0 for p in vocabulary.values()):
            raise ValueError("every edit needs at least one prompt")
        if embeddings.ndim != 3 or embeddings.shape[0] != len(vocabulary) + 1:
            raise ValueError(
                f"embeddings must be [{len(vocabulary) + 1}, L, text_dim] (one per edit + original), "
                f"got {tuple(embeddings.shape)}"
            )
        self.vocabulary = {k: tuple(v) for k, v in vocabulary.items()}
        self.names = [*self.vocabulary, ORIGINAL]
        self.feature_dim = feature_dim
        self.min_score = min_score
        self.temperature = temperature
        self.device = torch.device(device)
        self.embeddings = embeddings.detach().to(self.device)
        feats, owner = [], []
        for i, prompts in enumerate(self.vocabulary.values()):
            for p in prompts:
                feats.append(prompt_features(p, feature_dim))
                owner.append(i)
        self._known = torch.stack(feats)  # [P, feature_dim]
        self._owner = torch.tensor(owner)  # [P] edit index of each known prompt

    def to(self, device: torch.device | str) -> StyleTextEncoder:
        """Move the embeddings (returns self)."""
        self.device = torch.device(device)
        self.embeddings = self.embeddings.to(self.device)
        return self

    @property
    def text_dim(self) -> int:
        """Width of the conditioning (the DiT's ``text_dim``)."""
        return int(self.embeddings.shape[-1])

    def known_prompts(self) -> dict[str, tuple[str, ...]]:
        """The vocabulary: edit name -> prompts (canonical first), for the page's list."""
        return dict(self.vocabulary)

    def scores(self, prompt: str) -> Tensor:
        """Best cosine similarity of ``prompt`` with each edit's prompts: [edits] float32 (``original`` excluded)."""
        sim = self._known @ prompt_features(prompt, self.feature_dim)  # [P]
        out = torch.zeros(len(self.vocabulary))
        return out.scatter_reduce(0, self._owner, sim, reduce="amax", include_self=False)

    def weights(self, prompt: str) -> Tensor:
        """Mixing weights over all edits including ``original`` (last): [edits + 1], summing to 1."""
        s = self.scores(prompt)
        w = torch.zeros(len(self.names))
        if float(s.max()) < self.min_score:
            w[-1] = 1.0
        else:
            w[:-1] = torch.softmax(s / self.temperature, dim=0)
        return w

    def match(self, prompt: str) -> StyleMatch:
        """The edit a prompt selects (``original`` when unknown) and its score."""
        s = self.scores(prompt)
        best = int(s.argmax())
        score = float(s[best])
        if score < self.min_score:
            return StyleMatch(ORIGINAL, score, False)
        return StyleMatch(self.names[best], score, True)

    def encode(self, prompt: str) -> Tensor:
        """[1, L, text_dim] conditioning of ``prompt`` (float32 on :attr:`device`)."""
        w = self.weights(prompt).to(self.device, self.embeddings.dtype)
        return torch.einsum("e,eld->ld", w, self.embeddings)[None]

    # ---------------------------------------------------------------- persistence
    def state(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """(tensors, string metadata) for a safetensors file; :meth:`from_state` reads them back."""
        meta = {
            "style_vocabulary": json.dumps(self.vocabulary),
            "style_feature_dim": str(self.feature_dim),
            "style_min_score": repr(self.min_score),
            "style_temperature": repr(self.temperature),
        }
        return {"text.embeddings": self.embeddings.detach().cpu().contiguous()}, meta

    @classmethod
    def from_state(
        cls, tensors: Mapping[str, Tensor], metadata: Mapping[str, str], device: torch.device | str = "cpu"
    ) -> StyleTextEncoder:
        """Rebuild an encoder saved by :meth:`state`.

        Raises:
            ValueError: the file lacks the vocabulary or the embeddings.
        """
        try:
            vocab = json.loads(metadata["style_vocabulary"])
            emb = tensors["text.embeddings"]
        except KeyError as e:
            raise ValueError(f"not a style text encoder state: {e} missing") from e
        return cls(
            vocab,
            emb.float(),
            feature_dim=int(metadata.get("style_feature_dim", 4096)),
            min_score=float(metadata.get("style_min_score", 0.45)),
            temperature=float(metadata.get("style_temperature", 0.03)),
            device=device,
        )
