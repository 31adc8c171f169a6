"""Text encoders for skill texts: a deterministic offline hashing encoder and an optional local one."""
from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Sequence

import numpy as np
import torch

from taskweave.sim.errors import UserError

# Changing either constant changes every builtin embedding: checkpoints store the encoder spec.
BUILTIN_SEED = 20240917
BUILTIN_VERSION = 1


class TextEncoderError(UserError, RuntimeError):
    """A text encoder that cannot be made or loaded (bad spec, missing package or folder)."""


class BuiltinTextEncoder:
    """Hashed word, argument-role and character n-gram features, projected by a fixed random matrix.

    Each feature hashes (blake2b, independent of PYTHONHASHSEED) to a seed that draws its own
    Gaussian row of the projection; the sum is L2-normalised. Deterministic, offline, no weights.
    """

    spec = "builtin"

    def __init__(self, dim: int = 256, ngram: tuple = (3, 4)) -> None:
        if dim <= 0:
            raise TextEncoderError(f"builtin text encoder dim must be positive, got {dim}")
        self.dim = int(dim)
        self.ngram = tuple(ngram)
        self._rows: dict[str, np.ndarray] = {}

    def features(self, text: str) -> dict[str, float]:
        """Return the weighted sparse features of one text (for inspection and tests)."""
        t = " ".join(text.strip().lower().split())
        feats: dict[str, float] = {}

        def add(key: str, w: float) -> None:
            feats[key] = feats.get(key, 0.0) + w

        m = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*\((.*)\)", t)
        if m:  # a skill call: name + role-tagged arguments so that place(a, b) != place(b, a)
            name, args = m.group(1), _split_args(m.group(2))
            add(f"name={name}", 2.0)
            for i, arg in enumerate(args):
                add(f"arg{i}={arg}", 2.0)
                for part in re.findall(r"[a-z]+|\d+(?:\.\d+)?", arg):
                    add(f"arg{i}.part={part}", 1.0)
            add(f"arity={len(args)}", 0.5)
        for word in re.findall(r"[a-z0-9_.]+", t):
            add(f"w={word}", 1.0)
        padded = f"<{t}>"
        for n in self.ngram:
            for i in range(len(padded) - n + 1):
                add(f"c{n}={padded[i:i + n]}", 0.25)
        return feats

    def _row(self, key: str) -> np.ndarray:
        row = self._rows.get(key)
        if row is None:
            digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8,
                                     key=str(BUILTIN_SEED).encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            row = rng.standard_normal(self.dim).astype(np.float64)
            self._rows[key] = row
        return row

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed texts as an (N, dim) float32 tensor of unit-norm rows."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for key, w in self.features(text).items():
                out[i] += w * self._row(key)
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return torch.from_numpy(out.astype(np.float32))

    __call__ = encode


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from a local folder (never downloaded)."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        if not os.path.isdir(path):
            raise TextEncoderError(f"{path}: not a local sentence-transformers model folder "
                                   "(only local paths are supported; nothing is downloaded)")
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore
        except ImportError:
            raise TextEncoderError(
                f"text encoder {path!r} needs the 'sentence-transformers' package, which is not "
                "installed; install it or use text_encoder='builtin'") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self.model = SentenceTransformer(path, device=device)
        except Exception as exc:  # noqa: BLE001 - report any loader failure with the path
            raise TextEncoderError(f"{path}: could not load sentence-transformers model: {exc}") from exc
        self.dim = int(self.model.get_sentence_embedding_dimension())
        self.spec = path

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed texts as an (N, dim) float32 tensor of unit-norm rows."""
        if isinstance(texts, str):
            texts = [texts]
        emb = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return torch.as_tensor(np.asarray(emb, dtype=np.float32))

    __call__ = encode


def make_text_encoder(spec: str = "builtin", dim: int = 256):
    """Make the encoder named by spec: 'builtin' (optionally 'builtin:DIM') or a local model folder."""
    if not isinstance(spec, str) or not spec:
        raise TextEncoderError(f"text encoder spec must be a non-empty string, got {spec!r}")
    if spec == "builtin":
        return BuiltinTextEncoder(dim)
    if spec.startswith("builtin:"):
        try:
            return BuiltinTextEncoder(int(spec.split(":", 1)[1]))
        except ValueError:
            raise TextEncoderError(f"bad builtin text encoder spec {spec!r}; use 'builtin:DIM'") from None
    return SentenceTransformerEncoder(spec)


def _split_args(body: str) -> list[str]:
    """Split a call's argument text at top-level commas, keeping (x, y) tuples whole."""
    args, depth, cur = [], 0, []
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return [a.replace(" ", "") for a in args]


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Return texts without duplicates, first occurrence order kept."""
    return list(dict.fromkeys(texts))
