"""OpenAI-compatible chat-completions backend (OpenAI, vLLM, llama.cpp, Ollama) with our own retries.

The SDK's own retries are off (`max_retries=0`) so that the retry policy is ours and testable:
exponential backoff with jitter on 429, 408, 5xx, timeouts, connection errors and malformed
bodies; no retry on other 4xx. Replies are read raw and parsed here, so a malformed body or a
reply without choices is an error we can name, not a crash inside the SDK.

Constrained decoding (`constrain_api`) maps a `Constraint` to the server's request fields:
- "llamacpp" (llama.cpp's server and llama-cpp-python's `llama_cpp.server`): GBNF in `grammar` (grammars,
  and choices as alternatives); a JSON schema as `response_format={"type": "json_object", "schema": ...}`
  (llama-cpp-python accepts only the types text/json_object and answers `json_schema` with an error);
- "vllm": guided decoding, `guided_grammar` (GBNF), `guided_json` (schema), `guided_choice` (list);
- "openai": only JSON schemas, `response_format={"type": "json_schema", "json_schema": {"name", "schema",
  "strict": true}}` (string length bounds dropped: strict mode does not take them);
- "none": free decoding; "auto" (default): llamacpp for a loopback base URL, else openai.
Non-standard fields travel in the SDK's `extra_body`.

n > 1: the first request asks for n (with `seed`); a server that refuses n (a 400/422 naming it) or
answers fewer choices (llama.cpp's servers ignore n) is remembered (`supports_n = False`) and served by
separate requests with seeds `seed + i`. Usage is the server's: `prompt_tokens` counts the prompt once,
`prompt_tokens_sent` sums it over every request answered. Each attempt's timeout is `timeout +
timeout_per_token * n * max_tokens` ($TASKWEAVE_LLM_TIMEOUT: a flat limit per attempt); retries default to
5 ($TASKWEAVE_LLM_RETRIES). Every failed attempt is told as one line (attempt i/n, the error, the next wait;
stderr by default), so a silent server is never a silent wait. A call that finally fails is metered
(attempts, tokens spent) by `LLMClient.complete` from the `usage` the raised LLMError carries.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

import openai

from taskweave.planning.llm import LLMClient, LLMConfigError, LLMError, LLMResponse, estimate_tokens, messages_text

RETRY_STATUSES = frozenset({408, 409, 425, 429})  # plus every 5xx
_N_HINT = re.compile(r"(?<![\w'\"])['\"]?n['\"]?(?![\w])|\bchoices?\b|\bnum_?completions\b", re.I)

# llama-cpp-python answers a request its pydantic model rejects with HTTP 500: not worth retrying
_VALIDATION = re.compile(r"\bvalidation errors?\b", re.I)
CONSTRAIN_APIS = ("auto", "llamacpp", "vllm", "openai", "none")
API_KINDS = {"llamacpp": frozenset({"grammar", "json_schema", "choice"}),
             "vllm": frozenset({"grammar", "json_schema", "choice"}),
             "openai": frozenset({"json_schema"}),
             "none": frozenset()}
DEFAULT_TIMEOUT_PER_TOKEN = 0.05   # s per requested completion token (20 tokens/s worst case) on top of the base
_STRICT_DROP = ("minLength", "maxLength")   # JSON-schema keywords OpenAI's strict structured outputs refuse


class _Malformed(Exception):
    """A 2xx reply that is not a usable chat completion."""


class _NUnsupported(Exception):
    """The server rejected n > 1."""


@dataclass
class _Reply:
    texts: list
    finish_reasons: list
    prompt_tokens: int
    completion_tokens: int
    model: str
    estimated: bool


def is_loopback_url(url: str) -> bool:
    """Whether a base URL points at this machine (localhost, 127.0.0.0/8, ::1, 0.0.0.0)."""
    host = (urlparse(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def resolve_constrain_api(api: Optional[str], base_url: str) -> str:
    """The constrain API for a setting (None: TASKWEAVE_LLM_CONSTRAIN_API, else auto) and base URL."""
    api = (api or os.environ.get("TASKWEAVE_LLM_CONSTRAIN_API") or "auto").strip().lower()
    if api not in CONSTRAIN_APIS:
        raise LLMConfigError(f"unknown constrain_api {api!r} (choose one of: {', '.join(CONSTRAIN_APIS)})")
    if api == "auto":
        return "llamacpp" if is_loopback_url(base_url) else "openai"
    return api


def _strict_schema(schema):
    """A copy of a JSON schema without the keywords OpenAI's strict mode refuses."""
    if isinstance(schema, dict):
        return {k: _strict_schema(v) for k, v in schema.items() if k not in _STRICT_DROP}
    if isinstance(schema, list):
        return [_strict_schema(v) for v in schema]
    return schema


def constraint_fields(api: str, constraint) -> tuple:
    """(request body fields, kind applied) for a constraint under a constrain API; ({}, '') when it has none."""
    if constraint is None or api not in API_KINDS:
        return {}, ""
    kinds = API_KINDS[api]
    kind = constraint.kind if constraint.kind in kinds else (
        "json_schema" if constraint.schema is not None and "json_schema" in kinds else "")
    if not kind:
        return {}, ""
    if kind == "json_schema":
        schema = copy.deepcopy(constraint.schema)
        if api == "llamacpp":
            return {"response_format": {"type": "json_object", "schema": schema}}, kind
        if api == "vllm":
            return {"guided_json": schema}, kind
        name = re.sub(r"[^A-Za-z0-9_-]", "_", constraint.name or "reply")[:64]
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": name, "schema": _strict_schema(schema), "strict": True}}}, kind
    if api == "vllm":
        if kind == "choice":
            return {"guided_choice": [str(c) for c in constraint.choices]}, kind
        return {"guided_grammar": constraint.gbnf()}, kind
    return {"grammar": constraint.gbnf()}, kind   # llamacpp: grammars and choices as GBNF


class OpenAIClient(LLMClient):
    """Chat completions over HTTP from any OpenAI-compatible server."""

    def __init__(self, model: str, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = None, max_retries: Optional[int] = None, backoff: float = 0.5,
                 supports_n: Optional[bool] = None, max_backoff: float = 30.0, seed: Optional[int] = None, meter=None,
                 constrain_api: Optional[str] = None, timeout_per_token: float = DEFAULT_TIMEOUT_PER_TOKEN,
                 on_retry: Optional[Callable[[str], None]] = None):
        """Connect lazily to base_url (args, then TASKWEAVE_LLM_BASE_URL / OPENAI_BASE_URL) with key (args or
        OPENAI_API_KEY; local servers get a dummy key).

        timeout: base seconds per attempt, plus timeout_per_token x n x max_tokens (None: $TASKWEAVE_LLM_TIMEOUT
        as a flat limit per attempt, else 30); max_retries: retries after a failed attempt (default
        $TASKWEAVE_LLM_RETRIES, else 5); on_retry(line): told of every failed attempt, one line (attempt i/n,
        the error, the next wait; default: printed to stderr); seed: base sampling seed
        (sent on every request when given; n separate requests use seed + i, from 0 when not given) and the
        backoff jitter's seed; constrain_api: auto | llamacpp | vllm | openai | none (None:
        TASKWEAVE_LLM_CONSTRAIN_API, else auto).
        """
        super().__init__(model, meter)
        if not model:
            raise LLMConfigError("OpenAIClient needs a model name")
        self.base_url = (base_url or os.environ.get("TASKWEAVE_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if "api.openai.com" in self.base_url:
                raise LLMConfigError("no API key for https://api.openai.com: set OPENAI_API_KEY or pass api_key=, "
                                     "or point TASKWEAVE_LLM_BASE_URL at a local server")
            key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) ignore the key
        self.constrain_api = resolve_constrain_api(constrain_api, self.base_url)
        self.constraint_kinds = API_KINDS[self.constrain_api]
        if timeout is None and os.environ.get("TASKWEAVE_LLM_TIMEOUT"):
            timeout, timeout_per_token = _env_number("TASKWEAVE_LLM_TIMEOUT", float), 0.0
        if max_retries is None and os.environ.get("TASKWEAVE_LLM_RETRIES"):
            max_retries = _env_number("TASKWEAVE_LLM_RETRIES", int)
        self.timeout = float(30 if timeout is None else timeout)
        self.timeout_per_token = max(0.0, float(timeout_per_token))
        if not self.timeout > 0:
            raise LLMConfigError(f"the LLM timeout must be positive, got {timeout!r}")
        self.max_retries = max(0, int(5 if max_retries is None else max_retries))
        self.on_retry = on_retry if on_retry is not None else _print_stderr
        self.backoff = max(0.0, float(backoff))
        self.max_backoff = float(max_backoff)
        self.supports_n = supports_n  # None: find out from the server
        self.seed = None if seed is None else int(seed)
        self.requests = 0             # HTTP attempts over the client's life
        self.retries = 0
        self.last_seeds: list = []    # the seed of each request of the latest call (None: none sent)
        self._rng = random.Random(seed)
        self._sleep = time.sleep
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=0)

    @property
    def endpoint(self) -> str:
        """The chat-completions URL requests go to."""
        return f"{self.base_url}/chat/completions"

    def attempt_timeout(self, n: int, max_tokens: Optional[int]) -> float:
        """Seconds one attempt of a request for n completions of up to max_tokens may take."""
        return self.timeout + self.timeout_per_token * max(1, int(n)) * int(max_tokens or 0)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r}, constrain_api={self.constrain_api!r})"

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None) -> LLMResponse:
        fields, kind = constraint_fields(self.constrain_api, constraint)
        texts, reasons = [], []
        state = {"model": self.model, "estimated": False, "requests": 0, "prompt": 0, "sent": 0, "completion": 0}
        base = self.seed if self.seed is not None else 0
        self.last_seeds = []

        def take(r: _Reply, want: int):
            texts.extend(r.texts[:want])
            reasons.extend(r.finish_reasons[:want])
            state["prompt"] = max(state["prompt"], r.prompt_tokens)
            state["sent"] += r.prompt_tokens
            state["completion"] += r.completion_tokens
            state["model"] = r.model or state["model"]
            state["estimated"] |= r.estimated

        def send(k: int, seed: Optional[int]) -> _Reply:
            self.last_seeds.append(seed)
            return self._request(messages, k, temperature, top_p, max_tokens, stop, state, fields, seed)

        try:
            if n > 1 and self.supports_n is not False:
                try:
                    r = send(n, base)
                except _NUnsupported:
                    self.supports_n = False
                else:
                    take(r, n)
                    if len(r.texts) < n and self.supports_n is None:
                        self.supports_n = False  # the server ignores n: separate requests from now on
                    elif self.supports_n is None:
                        self.supports_n = True
            for _ in range(n):  # bounded: each pass adds at least one completion
                if len(texts) >= n:
                    break
                seed = base + len(texts) if n > 1 else self.seed
                take(send(1, seed), n - len(texts))
        except LLMError as e:
            e.usage = {"requests": state["requests"], "prompt_tokens": state["prompt"],
                       "prompt_tokens_sent": state["sent"], "completion_tokens": state["completion"],
                       "samples": len(texts)}
            raise
        return LLMResponse(texts=texts, prompt_tokens=state["prompt"], completion_tokens=state["completion"],
                           model=state["model"], cached=False, truncated=any(fr == "length" for fr in reasons),
                           usage_estimated=state["estimated"], finish_reasons=reasons, requests=state["requests"],
                           constrained=kind, prompt_tokens_sent=state["sent"])

    def _request(self, messages, n, temperature, top_p, max_tokens, stop, state, fields=None,
                 seed: Optional[int] = None) -> _Reply:
        """One logical request with retries; raises LLMError when they run out."""
        params = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p}
        if n > 1:
            params["n"] = n
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if stop:
            params["stop"] = stop
        if seed is not None:
            params["seed"] = int(seed)
        if fields:
            params["extra_body"] = dict(fields)
        timeout = self.attempt_timeout(n, max_tokens)
        attempts, last, status = 0, "", None
        for attempt in range(self.max_retries + 1):
            attempts += 1
            self.requests += 1
            state["requests"] += 1
            retry_after = None
            try:
                raw = self._client.chat.completions.with_raw_response.create(**params, timeout=timeout)
                return self._parse(raw.text, messages)
            except openai.APIStatusError as e:
                status = e.status_code
                detail = _error_detail(e)
                if n > 1 and status in (400, 422) and _N_HINT.search(detail):
                    raise _NUnsupported() from None
                if not (status in RETRY_STATUSES or status >= 500) or _VALIDATION.search(detail):
                    raise LLMError(f"chat completion at {self.endpoint} failed with HTTP {status} (not retried, "
                                   f"{attempts} attempt(s), model {self.model!r}): {detail}") from None
                last = f"HTTP {status}: {detail}"
                retry_after = _retry_after(e.response.headers.get("retry-after"))
            except openai.APITimeoutError:
                status, last = "timeout", f"no reply within {timeout:g} s"
            except openai.APIConnectionError as e:
                status, last = "connection error", f"{e.__cause__ or e}"[:200]
            except _Malformed as e:
                status, last = "malformed reply", str(e)
            if attempt < self.max_retries:
                self.retries += 1
                delay = self._delay(attempt, retry_after)
                self.on_retry(f"LLM request to {self.endpoint}: attempt {attempts}/{self.max_retries + 1} failed "
                              f"({status}: {' '.join(str(last).split())}); retrying in {delay:.1f} s")
                self._sleep(delay)
            else:
                self.on_retry(f"LLM request to {self.endpoint}: attempt {attempts}/{self.max_retries + 1} failed "
                              f"({status}: {' '.join(str(last).split())}); no retries left")
        raise LLMError(f"chat completion at {self.endpoint} failed after {attempts} attempt(s) "
                       f"(model {self.model!r}); last status: {status}; {last}")

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Exponential backoff with full jitter in [0.5, 1.5) x base, at least the server's Retry-After."""
        d = min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + self._rng.random())
        if retry_after is not None:
            d = max(d, min(retry_after, self.max_backoff))
        return d

    def _parse(self, body: str, messages) -> _Reply:
        """Read a chat-completions JSON body; raises _Malformed for anything unusable."""
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, TypeError) as e:
            raise _Malformed(f"body is not JSON ({e.msg if hasattr(e, 'msg') else e}): {body[:120]!r}") from None
        if not isinstance(data, dict):
            raise _Malformed(f"body is not a JSON object: {body[:120]!r}")
        if "error" in data and not data.get("choices"):
            raise _Malformed(f"error object in a 2xx reply: {str(data['error'])[:200]}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _Malformed("reply has no choices")
        texts, reasons = [], []
        for ch in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
            msg = ch.get("message") if isinstance(ch, dict) else None
            if not isinstance(msg, dict):
                raise _Malformed("choice without a message")
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if content is not None and not isinstance(content, str):
                raise _Malformed(f"message content is {type(content).__name__}, not text")
            texts.append(content or "")
            reasons.append(ch.get("finish_reason") or "")
        usage = data.get("usage")
        pt = ct = None
        if isinstance(usage, dict):
            pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        estimated = not (isinstance(pt, int) and isinstance(ct, int))
        if estimated:
            pt = estimate_tokens(messages_text(messages))
            ct = sum(estimate_tokens(t) for t in texts)
        return _Reply(texts, reasons, int(pt), int(ct), str(data.get("model") or ""), estimated)


def _error_detail(e: "openai.APIStatusError") -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:300]
    text = ""
    try:
        text = e.response.text
    except Exception:  # body unreadable: fall back to the SDK's message
        pass
    return (text or e.message or "")[:300]


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _env_number(name: str, kind):
    """A positive (timeout) or non-negative (retries) number from an environment variable; LLMConfigError else."""
    text = os.environ.get(name, "")
    try:
        v = kind(text)
    except ValueError:
        v = None
    if v is None or v < 0 or (kind is float and not 0 < v < float("inf")):
        raise LLMConfigError(f"${name} must be a {'positive number' if kind is float else 'non-negative integer'}, "
                             f"got {text!r}")
    return v


def _retry_after(value) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


__all__ = ["OpenAIClient", "CONSTRAIN_APIS", "API_KINDS", "constraint_fields", "resolve_constrain_api",
           "is_loopback_url"]
