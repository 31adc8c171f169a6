"""`llama:MODEL`: an embedded local LLM through llama.cpp (llama-cpp-python), with grammar-constrained decoding.

MODEL is a known model (`smollm2-135m`, `gemma3-270m`; see `planning.llm.models`) or a path to a
`.gguf` file. Why llama.cpp: it runs SmolLM2-135M at about 70 generated tokens/s on 2 CPU cores, loads
a GGUF in well under a second, enforces GBNF grammars (and JSON schemas, converted to GBNF) natively
while sampling, and reuses the KV cache of a shared prompt prefix, so the n samples of one request
evaluate the prompt once. (transformers + gguf + accelerate load the same file in about 20 s and need
xgrammar for constraints.)

n completions are n sampling passes with seeds `seed, seed + 1, ...`; usage is the model's own token
counts: `prompt_tokens` counts the prompt once, `prompt_tokens_sent` once per pass. A chat model gets
its chat template; a base model (Gemma 3 270M) gets the messages as plain text and completes it.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from typing import Optional

from taskweave.planning.llm import LLMClient, LLMConfigError, LLMError, LLMResponse, register_llm_backend
from taskweave.planning.llm.models import DEFAULT_MODEL, resolve_model

DEFAULT_CTX = 4096
DEFAULT_MAX_TOKENS = 256


def _import_llama():
    try:
        import llama_cpp
    except ImportError as e:
        raise LLMConfigError(f"the llama backend needs llama-cpp-python ({e}): pip install llama-cpp-python") from None
    return llama_cpp


@functools.lru_cache(maxsize=64)
def _grammar(gbnf: str):
    """A compiled LlamaGrammar for GBNF text (compiled once per text)."""
    llama_cpp = _import_llama()
    try:
        return llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise LLMError(f"llama.cpp rejected a grammar: {e}") from None


@functools.lru_cache(maxsize=16)
def _schema_grammar(schema_json: str):
    llama_cpp = _import_llama()
    return llama_cpp.LlamaGrammar.from_json_schema(schema_json, verbose=False)


def base_prompt(messages: list) -> str:
    """Chat messages as plain text for a base model: each turn's text, then an open reply."""
    parts = [str(m.get("content", "")).strip() for m in messages]
    return "\n\n".join(p for p in parts if p) + "\n\n"


class LlamaClient(LLMClient):
    """A GGUF model loaded in-process with llama.cpp."""

    constraint_kinds = frozenset({"grammar", "json_schema", "choice"})

    def __init__(self, model: str = DEFAULT_MODEL, *, n_ctx: int = DEFAULT_CTX, n_threads: Optional[int] = None,
                 seed: int = 0, meter=None, verbose: bool = False):
        """Load a known model or a .gguf path (checked by sha256); seed fixes every sampling pass."""
        self.info = resolve_model(model)
        llama_cpp = _import_llama()
        super().__init__(self.info.name, meter)
        self.seed = int(seed)
        self.n_ctx = int(n_ctx)
        # half the cores (physical ones, usually): llama.cpp's spinning threads degrade badly when oversubscribed
        threads = n_threads or int(os.environ.get("TASKWEAVE_LLM_THREADS", 0)) or max(1, min(8, (os.cpu_count() or 2) // 2))
        self._lock = threading.Lock()     # one llama.cpp context: one generation at a time
        try:
            self.llm = llama_cpp.Llama(model_path=self.info.path, n_ctx=self.n_ctx, n_threads=threads,
                                       n_threads_batch=threads, seed=self.seed, verbose=verbose)
        except (ValueError, RuntimeError) as e:
            raise LLMConfigError(f"llama.cpp could not load {self.info.path}: {e}") from None

    def _grammar_for(self, constraint):
        if constraint is None:
            return None, ""
        if constraint.kind in ("grammar", "choice"):
            return _grammar(constraint.gbnf()), constraint.kind
        return _schema_grammar(json.dumps(constraint.schema, sort_keys=True)), "json_schema"

    def _complete(self, messages, n, temperature, top_p, max_tokens, stop, tag, constraint=None) -> LLMResponse:
        grammar, kind = self._grammar_for(constraint)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        max_tokens = int(max_tokens or DEFAULT_MAX_TOKENS)
        texts, reasons, prompt_tokens, sent, completion = [], [], 0, 0, 0
        with self._lock:
            for i in range(n):
                kw = dict(temperature=float(temperature), top_p=float(top_p), max_tokens=max_tokens,
                          stop=stop or None, seed=self.seed + i, grammar=grammar)
                try:
                    if self.info.chat:
                        out = self.llm.create_chat_completion(messages=list(messages), **kw)
                        text = out["choices"][0]["message"].get("content") or ""
                    else:
                        out = self.llm.create_completion(prompt=base_prompt(messages), **kw)
                        text = out["choices"][0].get("text") or ""
                except ValueError as e:          # e.g. the prompt does not fit the context window
                    raise LLMError(f"llama.cpp ({self.info.name}) failed on a {tag or 'request'}: {e}") from None
                usage = out.get("usage") or {}
                texts.append(text)
                reasons.append(out["choices"][0].get("finish_reason") or "")
                prompt_tokens = int(usage.get("prompt_tokens", 0))
                sent += prompt_tokens
                completion += int(usage.get("completion_tokens", 0))
        return LLMResponse(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=completion, model=self.model,
                           truncated=any(r == "length" for r in reasons), finish_reasons=reasons, requests=n,
                           constrained=kind, prompt_tokens_sent=sent)

    def close(self) -> None:
        """Free the model."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None and hasattr(llm, "close"):
            llm.close()


def _llama_factory(arg: str, **kw) -> LlamaClient:
    allowed = {k: v for k, v in kw.items() if k in ("n_ctx", "n_threads", "seed", "meter", "verbose")}
    return LlamaClient(arg or DEFAULT_MODEL, **allowed)


register_llm_backend("llama", _llama_factory)

__all__ = ["LlamaClient", "base_prompt"]
