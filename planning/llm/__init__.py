"""One LLM client interface: messages in, n completions and token usage out; a backend registry.

Backends are chosen by a spec string: `llama:MODEL` (an embedded local model, `llm/llama.py`),
`openai:MODEL` (any OpenAI-compatible server), `replay:FILE`, and `offline` (the symbolic oracle for
control-flow tests, `llm/offline.py`: not a language model). Lazy backends register themselves with
`register_llm_backend` when first asked for.

A backend subclasses `LLMClient` and implements `_complete` (same arguments as `complete`);
`complete` validates the request, times it and records usage in the client's `UsageMeter`. A backend
that can read the model's next-token distribution also implements `_score` (`supports_scoring`):
`score_options` then answers "which of these one-token options comes next" with one forward pass and
their log-probabilities, in place of k sampled votes.
"""
from __future__ import annotations

import importlib
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from taskweave.sim.errors import RunError, UserError


class LLMError(RunError, RuntimeError):
    """An LLM request that could not be answered (server errors, exhausted retries, replay misses): the run
    could not complete (CLI exit 3)."""


class LLMConfigError(UserError, LLMError):
    """A client that cannot be set up as asked (missing file, model name or key): the user's to fix."""


class UnknownLLMBackendError(UserError, LLMError, ValueError):
    """A backend spec that names no registered backend."""


@dataclass
class LLMResponse:
    """The n completions of one request, with token usage and quality flags."""

    texts: list
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False            # answered from a replay file, no server involved
    truncated: bool = False         # at least one completion stopped at max_tokens
    usage_estimated: bool = False   # the server gave no usage; counts are ~4 chars/token estimates
    finish_reasons: list = field(default_factory=list)
    latency_s: float = 0.0
    requests: int = 0               # HTTP attempts spent on this response (retries included)
    constrained: str = ""           # the constraint kind the backend applied ('' when decoding was free)
    prompt_tokens_sent: int = 0     # prompt tokens over every request sent (n separate requests count n times)
    logprobs: Optional[dict] = None  # score_options: option -> log-probability of it as the reply's first token

    @property
    def text(self) -> str:
        """The first completion."""
        return self.texts[0] if self.texts else ""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> dict:
        """Token usage as a dict (prompt_tokens, completion_tokens, total_tokens, estimated)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "estimated": self.usage_estimated}

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LLMResponse":
        """Rebuild a response from `to_dict` output, ignoring unknown keys."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if not isinstance(known.get("texts"), list):
            raise ValueError("response record has no list of texts")
        return cls(**known)


def estimate_tokens(text: str) -> int:
    """Rough token count for text (about 4 characters per token)."""
    return max(1, (len(text) + 3) // 4) if text else 0


def messages_text(messages: list) -> str:
    """Concatenate the text content of chat messages."""
    parts = []
    for m in messages:
        c = m.get("content", "")
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        parts.append(f"{m.get('role', '')}: {c or ''}")
    return "\n".join(parts)


class UsageMeter:
    """Running totals of LLM calls and tokens, overall and per tag."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.calls = 0
        self.samples = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prompt_tokens_sent = 0
        self.constrained_calls = 0
        self.cached_calls = 0
        self.estimated_calls = 0
        self.truncated_calls = 0
        self.requests = 0
        self.failed_calls = 0         # calls that raised LLMError (their attempts and tokens are counted too)
        self.latency_s = 0.0
        self.by_tag = defaultdict(lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})

    def record(self, resp: LLMResponse, tag: str = "") -> None:
        """Add one response to the totals."""
        with self._lock:
            self.calls += 1
            self.samples += len(resp.texts)
            self.prompt_tokens += resp.prompt_tokens
            self.completion_tokens += resp.completion_tokens
            self.prompt_tokens_sent += resp.prompt_tokens_sent or resp.prompt_tokens
            self.constrained_calls += int(bool(resp.constrained))
            self.cached_calls += int(resp.cached)
            self.estimated_calls += int(resp.usage_estimated)
            self.truncated_calls += int(resp.truncated)
            self.requests += resp.requests
            self.latency_s += resp.latency_s
            t = self.by_tag[tag or "untagged"]
            t["calls"] += 1
            t["prompt_tokens"] += resp.prompt_tokens
            t["completion_tokens"] += resp.completion_tokens

    def record_failure(self, tag: str = "", usage: Optional[dict] = None, latency_s: float = 0.0) -> None:
        """Add one call that finally failed: its HTTP attempts and the tokens its answered requests spent
        (usage: requests, prompt_tokens, prompt_tokens_sent, completion_tokens; missing keys count 0)."""
        u = usage or {}
        with self._lock:
            self.failed_calls += 1
            self.requests += int(u.get("requests", 0))
            self.prompt_tokens += int(u.get("prompt_tokens", 0))
            self.completion_tokens += int(u.get("completion_tokens", 0))
            self.prompt_tokens_sent += int(u.get("prompt_tokens_sent", u.get("prompt_tokens", 0)))
            self.latency_s += float(latency_s)
            t = self.by_tag[tag or "untagged"]
            t["failed_calls"] = t.get("failed_calls", 0) + 1
            t["prompt_tokens"] += int(u.get("prompt_tokens", 0))
            t["completion_tokens"] += int(u.get("completion_tokens", 0))

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens so far."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        """JSON-serialisable snapshot of the totals."""
        with self._lock:
            return {"calls": self.calls, "samples": self.samples, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                    "prompt_tokens_sent": self.prompt_tokens_sent, "constrained_calls": self.constrained_calls,
                    "cached_calls": self.cached_calls, "estimated_calls": self.estimated_calls,
                    "truncated_calls": self.truncated_calls, "requests": self.requests,
                    "failed_calls": self.failed_calls,
                    "latency_s": round(self.latency_s, 4),
                    "by_tag": {k: dict(v) for k, v in self.by_tag.items()}}

    def since(self, before: dict) -> dict:
        """Counter differences between now and an earlier `to_dict()` snapshot (by_tag left out)."""
        now = self.to_dict()
        return {k: now[k] - before.get(k, 0) for k in now if k != "by_tag"}


class LLMClient:
    """Base class of every backend: `complete(messages, n, ...) -> LLMResponse` with usage metering.

    `constraint_kinds` lists the `Constraint` kinds the backend can enforce; a constraint of another
    kind is dropped (decoding is then free, and `LLMResponse.constrained` says so).
    """

    model: str = ""
    constraint_kinds: frozenset = frozenset()
    supports_scoring: bool = False     # score_options works (the backend reads next-token log-probabilities)

    def __init__(self, model: str = "", meter: Optional[UsageMeter] = None):
        self.model = model
        self.meter = meter if meter is not None else UsageMeter()

    def complete(self, messages: list, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: Optional[int] = None, stop=None, tag: str = "", constraint=None) -> LLMResponse:
        """Ask for n completions of a chat; returns texts and token usage, raising LLMError on failure.

        constraint: a `planning.llm.constraints.Constraint` the reply must follow, where the backend can.
        """
        _check_request(messages, n, temperature, top_p, max_tokens)
        kw = {}
        if constraint is not None and self.accepts(constraint):
            kw["constraint"] = constraint
        return self._metered(tag, lambda: self._complete(
            list(messages), n=int(n), temperature=float(temperature), top_p=float(top_p), max_tokens=max_tokens,
            stop=stop, tag=tag, **kw))

    def _metered(self, tag: str, call) -> LLMResponse:
        """Run one backend call, timing it and recording its usage; a call that raises LLMError is metered as
        failed with the attempts and tokens it spent (`e.usage`, set by the backend)."""
        t0 = time.monotonic()
        try:
            resp = call()
        except LLMError as e:
            self.meter.record_failure(tag, getattr(e, "usage", None), time.monotonic() - t0)
            raise
        if not resp.prompt_tokens_sent:
            resp.prompt_tokens_sent = resp.prompt_tokens
        if not resp.latency_s:
            resp.latency_s = time.monotonic() - t0
        self.meter.record(resp, tag)
        return resp

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None) -> LLMResponse:
        raise NotImplementedError

    def score_options(self, messages: list, options, tag: str = "") -> LLMResponse:
        """Log-probabilities of each option as the first token of the reply, from one forward pass.

        options: distinct short strings (option letters), each one token. The response's `logprobs` maps
        option -> log p (renormalised over the options is up to the caller), `texts` holds the most likely
        option. Raises LLMError when the backend cannot score (`supports_scoring` is False).
        """
        options = [str(o) for o in options]
        if not options or len(set(options)) != len(options) or any(not o.strip() for o in options):
            raise ValueError(f"score_options needs distinct non-blank options, got {options!r}")
        _check_request(messages, 1, 0.0, 1.0, 1)
        if not self.supports_scoring:
            raise LLMError(f"{type(self).__name__} cannot score options (no access to next-token log-probabilities)")
        return self._metered(tag, lambda: self._score(list(messages), options, tag))

    def _score(self, messages, options, tag) -> LLMResponse:
        raise NotImplementedError

    def accepts(self, constraint) -> bool:
        """Whether this backend can enforce the constraint (its kind, or a JSON schema it carries)."""
        return constraint.kind in self.constraint_kinds or (
            constraint.schema is not None and "json_schema" in self.constraint_kinds)

    def bind(self, world) -> "LLMClient":
        """Give the client the live world; only a client that answers from a world model (offline) uses it."""
        return self

    def close(self) -> None:
        """Release connections or files; the default does nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def _check_request(messages, n, temperature, top_p, max_tokens) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"bad chat message {m!r}: need 'role' and 'content'")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 256:
        raise ValueError(f"n must be an int in 1..256, got {n!r}")
    if not 0.0 <= float(temperature) <= 2.0:
        raise ValueError(f"temperature must be in [0, 2], got {temperature!r}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")


# ---------------------------------------------------------------- backend registry

Factory = Callable[..., LLMClient]
_BACKENDS: dict = {}
_LAZY_MODULES = {"offline": "taskweave.planning.llm.offline", "llama": "taskweave.planning.llm.llama"}


def register_llm_backend(name: str, factory: Factory) -> None:
    """Register `factory(arg: str, **kw) -> LLMClient` for specs `name` and `name:arg`."""
    if not name or ":" in name or not callable(factory):
        raise ValueError(f"bad backend registration {name!r}")
    _BACKENDS[name] = factory


def llm_backends() -> list:
    """Names of the backends that `make_llm` accepts."""
    return sorted(set(_BACKENDS) | set(_LAZY_MODULES))


def make_llm(spec: str, **kw) -> LLMClient:
    """Build a client from a spec: `offline`, `openai:MODEL` or `replay:FILE` (kw go to the backend)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownLLMBackendError(f"empty LLM spec; expected one of {_spec_help()}")
    name, _, arg = spec.strip().partition(":")
    if name not in _BACKENDS and name in _LAZY_MODULES:
        try:
            importlib.import_module(_LAZY_MODULES[name])
        except ModuleNotFoundError as e:
            if e.name != _LAZY_MODULES[name]:
                raise
        if name not in _BACKENDS:
            raise UnknownLLMBackendError(
                f"LLM backend {name!r} is not available: {_LAZY_MODULES[name]} did not register it "
                f"(register_llm_backend({name!r}, factory))")
    if name not in _BACKENDS:
        raise UnknownLLMBackendError(f"unknown LLM spec {spec!r}; expected one of {_spec_help()}")
    return _BACKENDS[name](arg, **kw)


def _spec_help() -> str:
    forms = {"offline": "offline", "openai": "openai:MODEL", "replay": "replay:FILE",
             "llama": "llama:smollm2-135m|gemma3-270m|PATH.gguf"}
    return ", ".join(forms.get(n, n) for n in llm_backends())


def _openai_factory(arg: str, **kw) -> LLMClient:
    if not arg:
        raise UnknownLLMBackendError("spec 'openai:' needs a model name, e.g. openai:gpt-4o-mini")
    from taskweave.planning.llm.openai_client import OpenAIClient
    return OpenAIClient(arg, **kw)


def _replay_factory(arg: str, **kw) -> LLMClient:
    if not arg:
        raise UnknownLLMBackendError("spec 'replay:' needs a file, e.g. replay:runs/llm_cache.jsonl")
    from taskweave.planning.llm.replay import ReplayClient
    return ReplayClient(arg, **kw)


register_llm_backend("openai", _openai_factory)
register_llm_backend("replay", _replay_factory)
