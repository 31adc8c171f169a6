"""Record/replay of LLM calls in a JSONL file, keyed by a SHA-256 hash of the canonical request.

Modes: `replay` answers only from the file (a miss is an LLMError); `record` always asks the inner
client and appends; `auto` replays hits and records misses. Each record is one line, written and
flushed on its own, so an interrupted run keeps everything already answered.

Identical requests recorded several times (sampling at temperature > 0) replay in recorded order;
once the recorded answers run out the last one is repeated.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from typing import Optional

from taskweave.planning.llm import LLMClient, LLMConfigError, LLMError, LLMResponse

MODES = ("replay", "record", "auto")
FORMAT_VERSION = 1


def canonical_request(model: str, messages: list, n: int, temperature: float, top_p: float,
                      max_tokens: Optional[int], stop, constraint=None) -> dict:
    """The fields that identify a request, normalised so equal requests compare equal (a constraint is part
    of the key; requests without one keep the keys of files recorded before constraints existed)."""
    if isinstance(stop, str):
        stop = [stop]
    req = {"model": model or "", "messages": [dict(m) for m in messages], "n": int(n),
           "temperature": round(float(temperature), 6), "top_p": round(float(top_p), 6),
           "max_tokens": None if max_tokens is None else int(max_tokens),
           "stop": list(stop) if stop else None}
    if constraint is not None:
        req["constraint"] = constraint.key()
    return req


def request_key(request: dict) -> str:
    """SHA-256 hex digest of a canonical request's JSON (sorted keys, no whitespace)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplayClient(LLMClient):
    """An LLM client that replays recorded answers from JSONL and records new ones from an inner client."""

    constraint_kinds = frozenset({"grammar", "json_schema", "choice"})   # keyed, and passed on to the inner client

    def __init__(self, path, inner: Optional[LLMClient] = None, mode: str = "replay",
                 model: Optional[str] = None, meter=None):
        """Open (or start) the record file at path; `model` defaults to the inner client's or the file's."""
        if mode not in MODES:
            raise ValueError(f"replay mode must be one of {MODES}, got {mode!r}")
        if mode in ("record", "auto") and inner is None:
            raise LLMConfigError(f"replay mode {mode!r} needs an inner client to ask on a miss (file {path})")
        super().__init__(model or (inner.model if inner is not None else ""), meter)
        self.path = os.fspath(path)
        self.inner = inner
        self.mode = mode
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._records = defaultdict(list)   # key -> [response dict, ...] in file order
        self._cursor = defaultdict(int)     # key -> how many of them were replayed
        self._models = []                   # models seen in the file, first-seen order
        if mode == "replay" and not os.path.exists(self.path):
            raise LLMConfigError(f"replay file {self.path} does not exist")
        if os.path.exists(self.path):
            self._load()
        if not self.model and len(self._models) == 1:
            self.model = self._models[0]  # a file recorded from one model replays as that model

    def __len__(self) -> int:
        return sum(len(v) for v in self._records.values())

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = rec["key"]
                    LLMResponse.from_dict(rec["response"])
                    model = rec.get("request", {}).get("model", "")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                    raise LLMConfigError(f"corrupt replay record at {self.path}:{lineno}: {type(e).__name__}: {e}; "
                                   f"line starts {line[:80]!r}") from None
                self._records[key].append(rec["response"])
                if model not in self._models:
                    self._models.append(model)

    def _lookup(self, request: dict) -> Optional[tuple]:
        models = [request["model"]] if request["model"] else (self._models or [""])
        # a constrained request also matches a record of the same request answered without the constraint
        # (recorded from a backend that decodes freely, which keyed it unconstrained)
        forms = [request] + ([{k: v for k, v in request.items() if k != "constraint"}] if "constraint" in request
                             else [])
        for form in forms:
            for m in models:
                key = request_key({**form, "model": m})
                if self._records.get(key):
                    return key, m
        return None

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None) -> LLMResponse:
        if constraint is not None and self.inner is not None and not self.inner.accepts(constraint):
            constraint = None            # the inner backend decodes freely: key the record as unconstrained
        req = canonical_request(self.model, messages, n, temperature, top_p, max_tokens, stop, constraint)
        if self.mode != "record":
            with self._lock:
                found = self._lookup(req)
                if found is not None:
                    key, _ = found
                    recs = self._records[key]
                    i = min(self._cursor[key], len(recs) - 1)
                    self._cursor[key] += 1
                    self.hits += 1
                    resp = LLMResponse.from_dict(recs[i])
                    resp.cached, resp.requests, resp.latency_s = True, 0, 0.0  # latency: measured by complete()
                    return resp
            if self.mode == "replay":
                self.misses += 1
                raise LLMError(f"replay miss: no record with key {request_key(req)} in {self.path} "
                               f"(model {self.model or 'any of ' + str(self._models)}, n={n}, temperature={temperature:g}, "
                               f"tag {tag!r}); record it with mode='record' or 'auto'")
        self.misses += 1
        resp = self.inner.complete(messages, n=n, temperature=temperature, top_p=top_p,
                                   max_tokens=max_tokens, stop=stop, tag=tag, constraint=constraint)
        self._append(req, resp, tag)
        return resp

    @property
    def supports_scoring(self) -> bool:
        """Scores replay from the file; new ones need an inner client that can score."""
        return self.mode == "replay" or (self.inner is not None and self.inner.supports_scoring)

    def _score(self, messages, options, tag) -> LLMResponse:
        req = {"model": self.model or "", "messages": [dict(m) for m in messages], "score": list(options)}
        if self.mode != "record":
            with self._lock:
                found = self._lookup(req)
                if found is not None:
                    resp = LLMResponse.from_dict(self._records[found[0]][-1])
                    self.hits += 1
                    resp.cached, resp.requests, resp.latency_s = True, 0, 0.0
                    return resp
            if self.mode == "replay":
                self.misses += 1
                raise LLMError(f"replay miss: no recorded option scores with key {request_key(req)} in {self.path} "
                               f"(tag {tag!r}); record it with mode='record' or 'auto'")
        self.misses += 1
        resp = self.inner.score_options(messages, options, tag=tag)
        self._append(req, resp, tag)
        return resp

    def _append(self, req: dict, resp: LLMResponse, tag: str) -> None:
        key = request_key(req)
        saved = resp.to_dict()
        saved["cached"] = False
        rec = {"v": FORMAT_VERSION, "key": key, "tag": tag, "time": round(time.time(), 3),
               "request": req, "response": saved}
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)
            with open(self.path, "a+b") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:  # a torn last line from a crash must not swallow this record
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write(line.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            self._records[key].append(saved)
            self._cursor[key] = len(self._records[key])
            if req["model"] not in self._models:
                self._models.append(req["model"])

    def bind(self, world) -> "ReplayClient":
        """Pass the live world on to the inner client (an offline one answers from it)."""
        if self.inner is not None:
            self.inner.bind(world)
        return self

    def close(self) -> None:
        """Close the inner client, if any."""
        if self.inner is not None:
            self.inner.close()
