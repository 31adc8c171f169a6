"""OpenAI-compatible chat-completions backend (OpenAI, vLLM, Ollama, llama.cpp) with our own retries.

The SDK's own retries are off (`max_retries=0`) so that the retry policy is ours and testable:
exponential backoff with jitter on 429, 408, 5xx, timeouts, connection errors and malformed
bodies; no retry on other 4xx. Replies are read raw and parsed here, so a malformed body or a
reply without choices is an error we can name, not a crash inside the SDK.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Optional

import openai

from taskweave.planning.llm import LLMClient, LLMConfigError, LLMError, LLMResponse, estimate_tokens, messages_text

RETRY_STATUSES = frozenset({408, 409, 425, 429})  # plus every 5xx
_N_HINT = re.compile(r"(?<![\w'\"])['\"]?n['\"]?(?![\w])|\bchoices?\b|\bnum_?completions\b", re.I)


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


class OpenAIClient(LLMClient):
    """Chat completions over HTTP from any OpenAI-compatible server."""

    def __init__(self, model: str, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: float = 30, max_retries: int = 5, backoff: float = 0.5, supports_n: Optional[bool] = None,
                 max_backoff: float = 30.0, seed: Optional[int] = None, meter=None):
        """Connect lazily to base_url (args, then TASKWEAVE_LLM_BASE_URL / OPENAI_BASE_URL) with key (args or OPENAI_API_KEY)."""
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
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = max(0.0, float(backoff))
        self.max_backoff = float(max_backoff)
        self.supports_n = supports_n  # None: find out from the server
        self.requests = 0             # HTTP attempts over the client's life
        self.retries = 0
        self._rng = random.Random(seed)
        self._sleep = time.sleep
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=0)

    @property
    def endpoint(self) -> str:
        """The chat-completions URL requests go to."""
        return f"{self.base_url}/chat/completions"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag) -> LLMResponse:
        texts, reasons, usage = [], [], [0, 0]
        state = {"model": self.model, "estimated": False, "requests": 0}

        def take(r: _Reply, want: int):
            texts.extend(r.texts[:want])
            reasons.extend(r.finish_reasons[:want])
            usage[0] += r.prompt_tokens
            usage[1] += r.completion_tokens
            state["model"] = r.model or state["model"]
            state["estimated"] |= r.estimated

        if n > 1 and self.supports_n is not False:
            try:
                r = self._request(messages, n, temperature, top_p, max_tokens, stop, state)
            except _NUnsupported:
                self.supports_n = False
            else:
                take(r, n)
                if len(r.texts) < n and self.supports_n is None:
                    self.supports_n = False  # the server ignores n: loop from now on
                elif self.supports_n is None:
                    self.supports_n = True
        for _ in range(n):  # bounded: each pass adds at least one completion
            if len(texts) >= n:
                break
            take(self._request(messages, 1, temperature, top_p, max_tokens, stop, state), n - len(texts))
        return LLMResponse(texts=texts, prompt_tokens=usage[0], completion_tokens=usage[1], model=state["model"],
                           cached=False, truncated=any(fr == "length" for fr in reasons),
                           usage_estimated=state["estimated"], finish_reasons=reasons, requests=state["requests"])

    def _request(self, messages, n, temperature, top_p, max_tokens, stop, state) -> _Reply:
        """One logical request with retries; raises LLMError when they run out."""
        params = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p}
        if n > 1:
            params["n"] = n
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if stop:
            params["stop"] = stop
        attempts, last, status = 0, "", None
        for attempt in range(self.max_retries + 1):
            attempts += 1
            self.requests += 1
            state["requests"] += 1
            retry_after = None
            try:
                raw = self._client.chat.completions.with_raw_response.create(**params)
                return self._parse(raw.text, messages)
            except openai.APIStatusError as e:
                status = e.status_code
                detail = _error_detail(e)
                if n > 1 and status in (400, 422) and _N_HINT.search(detail):
                    raise _NUnsupported() from None
                if not (status in RETRY_STATUSES or status >= 500):
                    raise LLMError(f"chat completion at {self.endpoint} failed with HTTP {status} (not retried, "
                                   f"{attempts} attempt(s), model {self.model!r}): {detail}") from None
                last = f"HTTP {status}: {detail}"
                retry_after = _retry_after(e.response.headers.get("retry-after"))
            except openai.APITimeoutError:
                status, last = "timeout", f"no reply within {self.timeout:g} s"
            except openai.APIConnectionError as e:
                status, last = "connection error", f"{e.__cause__ or e}"[:200]
            except _Malformed as e:
                status, last = "malformed reply", str(e)
            if attempt < self.max_retries:
                self.retries += 1
                self._sleep(self._delay(attempt, retry_after))
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


def _retry_after(value) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
