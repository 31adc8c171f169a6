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

Greedy decoding under a grammar (temperature 0: CLEA's planner, observer and memory, the iterative planner)
takes the unconstrained argmax first and asks the grammar about that one token; only when the grammar
rejects it is the grammar applied to the whole vocabulary (`GreedyGrammarSampler`, the order llama.cpp's own
common sampler uses). The result is the same token either way (the argmax over the allowed tokens), but
llama-cpp-python applies the grammar to every token of the vocabulary at every step, which was 77% of a
Gemma 3 run's CPU time (262k tokens). Sampling at a temperature above 0 keeps llama-cpp-python's chain.

`score_options` reads the model's next-token distribution directly: the prompt (rendered exactly as
a chat completion renders it) is evaluated once, reusing the KV cache of a shared prefix, and the
last position's logits are read from the llama.cpp context (llama-cpp-python's own `logprobs` needs
`logits_all=True`, which keeps logits for every prompt position and slows every call).
"""
from __future__ import annotations

import functools
import json
import math
import os
import threading
from typing import Optional

import numpy as np

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


class GreedyGrammarSampler:
    """Greedy decoding under a grammar that applies the grammar to the whole vocabulary only when the
    unconstrained argmax breaks it (same tokens as grammar-then-argmax, see the module notes).

    Stands in for the `LlamaSampler` chain llama-cpp-python builds for one generation (`.sample(ctx, idx)`
    also accepts the token into the grammar state, as `llama_sampler_sample` does for a chain)."""

    def __init__(self, llama_cpp, free, full, grammar_index: int):
        self._lc, self.free, self.full = llama_cpp, free, full   # chains: penalties+greedy, penalties+grammar+greedy
        self._grammar = llama_cpp.llama_sampler_chain_get(full.sampler, grammar_index)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._arr = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self.custom_samplers = []
        self.fast = self.fallback = 0              # tokens decided each way (for tests and benchmarks)

    def sample(self, ctx, idx: int = -1) -> int:
        token = self.free.sample(ctx, idx)         # argmax over the whole vocabulary
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._arr.size, self._arr.selected = 1, -1
        self._lc.llama_sampler_apply(self._grammar, self._lc.ctypes.byref(self._arr))
        if math.isfinite(self._one[0].logit):      # the grammar allows it: it is the argmax of the allowed tokens
            self.full.accept(token)
            self.fast += 1
            return token
        self.fallback += 1
        return self.full.sample(ctx, idx)          # grammar over the whole vocabulary, then argmax (and accept)

    def accept(self, token: int) -> None:
        self.full.accept(token)

    def reset(self) -> None:
        self.free.reset()
        self.full.reset()


def _install_greedy_grammar(llm, llama_cpp) -> None:
    """Make `llm` build a `GreedyGrammarSampler` for greedy generations under a grammar."""
    original = llm._init_sampler

    def init_sampler(*args, **kw):
        full = original(*args, **kw)
        neutral = (kw.get("repeat_penalty", 1.0) == 1.0 and not kw.get("frequency_penalty")
                   and not kw.get("presence_penalty") and kw.get("logits_processor") is None)
        if args or kw.get("grammar") is None or kw.get("temp", 0.8) != 0.0 or not neutral:
            return full
        free = original(**{**kw, "grammar": None})
        # the chain is [penalties, grammar, greedy] (llama-cpp-python 0.3's _init_sampler); anything else: as built
        if llama_cpp.llama_sampler_chain_n(full.sampler) != 3:
            return full
        return GreedyGrammarSampler(llama_cpp, free, full, grammar_index=1)
    llm._init_sampler = init_sampler


def base_prompt(messages: list) -> str:
    """Chat messages as plain text for a base model: each turn's text, then an open reply."""
    parts = [str(m.get("content", "")).strip() for m in messages]
    return "\n\n".join(p for p in parts if p) + "\n\n"


class LlamaClient(LLMClient):
    """A GGUF model loaded in-process with llama.cpp."""

    constraint_kinds = frozenset({"grammar", "json_schema", "choice"})
    supports_scoring = True

    def __init__(self, model: str = DEFAULT_MODEL, *, n_ctx: int = DEFAULT_CTX, n_threads: Optional[int] = None,
                 seed: int = 0, meter=None, verbose: bool = False, greedy_grammar: Optional[str] = None):
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
        # greedy decoding under a grammar: "fast" (argmax first, see the module notes) or "full" (the library's chain)
        self.greedy_grammar = greedy_grammar or os.environ.get("TASKWEAVE_LLM_GREEDY_GRAMMAR") or "fast"
        if self.greedy_grammar not in ("fast", "full"):
            raise LLMConfigError(f"greedy grammar mode must be fast or full, got {self.greedy_grammar!r} "
                                 f"(TASKWEAVE_LLM_GREEDY_GRAMMAR)")
        if self.greedy_grammar == "fast":
            _install_greedy_grammar(self.llm, llama_cpp)

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

    # ---- scoring -----------------------------------------------------------------------------
    def _prompt_tokens(self, messages) -> list:
        """The prompt tokens exactly as a completion of these messages sees them."""
        if not self.info.chat:
            return self.llm.tokenize(base_prompt(messages).encode("utf-8"), add_bos=True, special=False)
        fmt = getattr(self, "_formatter", None)
        if fmt is None:
            from llama_cpp import llama_chat_format
            template = self.llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise LLMError(f"{self.info.name} has no chat template in its GGUF metadata")
            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            text = self.llm._model.token_get_text
            fmt = self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=text(eos) if eos != -1 else "", bos_token=text(bos) if bos != -1 else "",
                stop_token_ids=[eos])
        result = fmt(messages=list(messages))
        return self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _option_tokens(self, option: str) -> list:
        """The token ids that spell the option as one token (bare, and after a space)."""
        ids = []
        for form in (option, " " + option):
            toks = self.llm.tokenize(form.encode("utf-8"), add_bos=False, special=False)
            if len(toks) == 1 and toks[0] not in ids:
                ids.append(toks[0])
        if not ids:
            raise LLMError(f"option {option!r} is not a single token for {self.info.name}; it cannot be scored")
        return ids

    def _score(self, messages, options, tag) -> LLMResponse:
        with self._lock:
            tokens = self._prompt_tokens(messages)
            if len(tokens) >= self.n_ctx:
                raise LLMError(f"llama.cpp ({self.info.name}): a {tag or 'request'} prompt of {len(tokens)} tokens "
                               f"does not fit the context window of {self.n_ctx}")
            option_ids = {o: self._option_tokens(o) for o in options}
            llm = self.llm
            # reuse the cached prefix, always re-evaluating at least the last token (its logits are read)
            prev = llm.input_ids[:llm.n_tokens].tolist()
            keep = 0
            for a, b in zip(prev, tokens):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(tokens) - 1)
            llm.n_tokens = keep
            llm.eval(tokens[keep:])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        top = logits.max()
        log_z = top + math.log(float(np.exp(logits - top).sum()))
        logprobs = {}
        for o, ids in option_ids.items():
            vals = logits[ids] - log_z
            m = vals.max()
            logprobs[o] = float(m + math.log(float(np.exp(vals - m).sum())))
        best = max(options, key=lambda o: logprobs[o])
        return LLMResponse(texts=[best], prompt_tokens=len(tokens), completion_tokens=0, model=self.model,
                           finish_reasons=["scored"], requests=1, constrained="choice", logprobs=logprobs)

    def close(self) -> None:
        """Free the model."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None and hasattr(llm, "close"):
            llm.close()


def _llama_factory(arg: str, **kw) -> LlamaClient:
    allowed = {k: v for k, v in kw.items() if k in ("n_ctx", "n_threads", "seed", "meter", "verbose",
                                                     "greedy_grammar")}
    return LlamaClient(arg or DEFAULT_MODEL, **allowed)


register_llm_backend("llama", _llama_factory)

__all__ = ["LlamaClient", "base_prompt"]
