"""Local LLM speed through the embedded llama.cpp backend, per model, on the real planning prompts.

    python benchmarks/llm_speed.py [--models smollm2-135m,gemma3-270m] [--samples 50] [--votes 20] [--json]

Per model: load time; prompt evaluation tokens/s (a fresh prompt, one generated token); free
generation tokens/s (greedy, 64 tokens); Tree-Planner's N-plan sampling call on the BlockInBowl
scene's real `tree_sample` prompt under the scene's plan grammar (wall time, plans, tokens/s, valid
plans); one deciding step by k sampled votes under the option-letter grammar, and the same step by
one forward pass reading the option letters' log-probabilities (`score_options`, Tree-Planner's
`--decide logprobs`), with whether the two agree on the letter; a greedy reply to the same `tree_sample`
prompt under the plan grammar, decoded both ways the backend can (`fast`: the unconstrained argmax, checked
against the grammar; `full`: llama-cpp-python's grammar over the whole vocabulary), with the speed-up and
whether the tokens are the same. Prints the CPU and the thread count; all figures are wall clock on this machine as it is
(other load slows llama.cpp's spinning threads a lot: run it on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_speed import cpu_name  # noqa: E402  (one CPU-name reader for every benchmark)

from taskweave.envs import make_env
from taskweave.planning.executors import EnvSkillExecutor
from taskweave.planning.grounding import format_options, format_skill_catalogue, parse_plan
from taskweave.planning.llm import make_llm
from taskweave.planning.llm.constraints import option_constraint, plan_constraint
from taskweave.planning.llm.models import KNOWN_MODELS
from taskweave.planning.prompts import build_messages, load_example


def scene_prompts(seed: int = 20_000_000):
    """The real tree_sample and tree_decide messages of a BlockInBowl scene, with its names."""
    env = make_env("BlockInBowl", "mujoco", control="skill")
    env.reset(seed=seed)
    ex = EnvSkillExecutor(env)
    objects, zones = ex.object_names, ex.zone_names
    fields = {"skills": format_skill_catalogue(), "objects": ", ".join(objects), "zones": ", ".join(zones) or "none",
              "task": ex.instruction}
    sample = build_messages("tree_sample", state=ex.observe(), example=load_example("plan"), **fields)
    calls = [f"pick({o})" for o in objects[:3]]
    decide = build_messages("tree_decide", task=ex.instruction, observation=ex.observe(), history="none yet",
                            options=format_options(calls), error="")
    env.close()
    return sample, decide, objects, zones, len(calls)


def greedy_grammar_speed(model: str, messages, constraint, repeats: int = 2) -> dict:
    """Tokens/s of one greedy constrained reply, decoded the fast way and the library's way (best of repeats,
    prompt already in the KV cache), and whether the two replies are the same."""
    out, texts = {}, {}
    for mode in ("fast", "full"):
        llm = make_llm(f"llama:{model}", seed=0, greedy_grammar=mode)
        try:
            llm.complete(messages, max_tokens=1)            # the prompt in the KV cache: time the decoding only
            best = None
            for _ in range(repeats):
                t = time.perf_counter()
                r = llm.complete(messages, temperature=0.0, max_tokens=160, constraint=constraint)
                wall = time.perf_counter() - t
                best = wall if best is None else min(best, wall)
            texts[mode] = r.texts[0]
            out[mode] = {"wall_s": round(best, 2), "tokens": r.completion_tokens,
                         "tokens_per_s": round(r.completion_tokens / best, 1)}
        finally:
            llm.close()
    out["speedup"] = round(out["full"]["wall_s"] / out["fast"]["wall_s"], 2)
    out["same_reply"] = texts["fast"] == texts["full"]
    return out


def measure(model: str, samples: int, votes: int) -> dict:
    """Every figure for one model."""
    t0 = time.perf_counter()
    llm = make_llm(f"llama:{model}", seed=0)
    load_s = time.perf_counter() - t0
    sample, decide, objects, zones, n_opt = scene_prompts()
    try:
        fresh = [{"role": "user", "content": "Describe a tabletop with " + ", ".join(objects) + ". " * 40}]
        t = time.perf_counter()
        r = llm.complete(fresh, max_tokens=1)
        prompt_tps = r.prompt_tokens / (time.perf_counter() - t)
        t = time.perf_counter()
        r = llm.complete([{"role": "user", "content": "Write a long story about a robot arm."}], max_tokens=64)
        gen_s = time.perf_counter() - t
        gen_tps = r.completion_tokens / gen_s
        t = time.perf_counter()
        r = llm.complete(sample, n=samples, temperature=0.8, top_p=0.95, max_tokens=160,
                         constraint=plan_constraint(objects, zones))
        sample_s = time.perf_counter() - t
        valid = sum(1 for x in r.texts if not parse_plan(x).errors)
        plan_tokens = r.completion_tokens
        t = time.perf_counter()
        v = llm.complete(decide, n=votes, temperature=0.7, max_tokens=2, constraint=option_constraint(n_opt))
        vote_s = time.perf_counter() - t
        letters = [chr(ord("A") + i) for i in range(n_opt)]
        llm.complete(sample, max_tokens=1)      # another prompt in the KV cache, as in a planner between decisions
        t = time.perf_counter()
        sc = llm.score_options(decide, letters)
        score_s = time.perf_counter() - t
    finally:
        llm.close()
    greedy = greedy_grammar_speed(model, sample, plan_constraint(objects, zones))
    return {"model": model, "greedy_grammar": greedy, "load_s": round(load_s, 2), "prompt_tokens_per_s": round(prompt_tps, 1),
            "generation_tokens_per_s": round(gen_tps, 1), "sampling": {
                "n": samples, "wall_s": round(sample_s, 2), "prompt_tokens": r.prompt_tokens,
                "completion_tokens": plan_tokens, "tokens_per_s": round(plan_tokens / sample_s, 1),
                "valid_plans": valid},
            "decide_votes": {"k": votes, "wall_s": round(vote_s, 2), "letters": sorted(set(v.texts))},
            "decide_logprobs": {"wall_s": round(score_s, 3), "letter": sc.text, "prompt_tokens": sc.prompt_tokens,
                                "logprobs": {k: round(x, 3) for k, x in sc.logprobs.items()},
                                "agrees_with_votes": max(sorted(set(v.texts)), key=v.texts.count) == sc.text}}


def main(argv=None) -> int:
    """Measure each installed model and print a table (or JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(KNOWN_MODELS))
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--votes", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    threads = os.environ.get("TASKWEAVE_LLM_THREADS") or str(max(1, (os.cpu_count() or 2) // 2))
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None   # before our own load
    rows = []
    for m in [x.strip() for x in args.models.split(",") if x.strip()]:
        if m in KNOWN_MODELS and not KNOWN_MODELS[m].installed():
            print(f"skip {m}: not installed ({KNOWN_MODELS[m].pip})", file=sys.stderr)
            continue
        rows.append(measure(m, args.samples, args.votes))
    out = {"cpu": cpu_name(), "cores": os.cpu_count(), "llm_threads": int(threads), "load_average": load,
           "models": rows}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"CPU: {out['cpu']} ({out['cores']} cores, llama.cpp threads {threads}, load average {load} at the start)")
    print("| model | load s | prompt tok/s | generation tok/s | N-plan sampling (wall s, tok/s, valid) | "
          "k-vote decide (wall s) | logprob decide (wall s, agrees with the vote) | greedy plan under the grammar "
          "(fast vs full tok/s, speed-up, same reply) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, d = r["sampling"], r["decide_votes"]
        print(f"| {r['model']} | {r['load_s']} | {r['prompt_tokens_per_s']} | {r['generation_tokens_per_s']} | "
              f"N={s['n']}: {s['wall_s']} s, {s['tokens_per_s']} tok/s, {s['valid_plans']}/{s['n']} valid | "
              f"k={d['k']}: {d['wall_s']} s | {r['decide_logprobs']['wall_s']} s, "
              f"{'yes' if r['decide_logprobs']['agrees_with_votes'] else 'no'} | "
              f"{r['greedy_grammar']['fast']['tokens_per_s']} vs {r['greedy_grammar']['full']['tokens_per_s']}, "
              f"{r['greedy_grammar']['speedup']}x, {'yes' if r['greedy_grammar']['same_reply'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
