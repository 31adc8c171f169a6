"""`taskweave generate`: GenSim-style task generation into the task library, with per-stage counts."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter

from taskweave.commands.common import (add_executor_arguments, add_llm_arguments, check_output_dir, llm_environment,
                                       make_executor_from_args, seed_int)
from taskweave.sim.errors import UserError

HELP = "generate new tasks with an LLM (GenSim-style)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave generate`."""
    p.add_argument("--mode", choices=("explore", "target"), default="explore")
    p.add_argument("--target", default="", help="target task (built-in or library) for --mode target")
    p.add_argument("--n", type=int, default=5, help="candidates to propose")
    add_llm_arguments(p, "offline", "offline (the task composer), llama:MODEL, openai:MODEL or replay:FILE")
    p.add_argument("--library", default=None, help="library folder (default $TASKWEAVE_LIBRARY or ./task_library)")
    p.add_argument("--out", default=None, help="run folder (default runs/generate/<time>)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the offline composer")
    p.add_argument("--seeds", type=int, default=4, help="oracle seeds per engine (accept at 3 of 4)")
    p.add_argument("--max-repairs", type=int, default=2)
    p.add_argument("--votes", type=int, default=2, help="reflection votes (any no rejects)")
    p.add_argument("--flaw-rate", type=float, default=0.3, help="offline composer: share of flawed drafts")
    p.add_argument("--implement", choices=("code", "spec"), default="code",
                   help="implement stage output: code (a task module, run only in the sandbox) or spec (a JSON task "
                        "spec, constrained where the backend can; rendered into a module from a fixed template)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    add_executor_arguments(p, 2)   # the sandboxed validation jobs: one worker per backend by default


def run(args) -> int:
    """Generate args.n candidates into the library; print the stage counts (or the JSON summary)."""
    if args.n < 1 or args.seeds < 1 or args.max_repairs < 0 or args.votes < 1:
        raise UserError("--n, --seeds and --votes must be positive, --max-repairs >= 0")
    from taskweave.generation.library import TaskLibrary
    from taskweave.generation.pipeline import GenerationPipeline, make_generator_llm
    from taskweave.sim.fileio import atomic_write_json
    out = args.out or os.path.join("runs", "generate", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    llm_environment(args)   # --llm-base-url / --llm-timeout / --llm-retries for the client built below
    check_output_dir(out)
    library = TaskLibrary(args.library)
    llm = make_generator_llm(args.llm, args.seed, args.flaw_rate)
    if getattr(llm, "disclaimer", ""):
        print(f"note: {llm.disclaimer}", file=sys.stderr)
    executor = make_executor_from_args(args)
    pipe = GenerationPipeline(llm, library, out, args.mode, args.target, args.seeds, args.max_repairs, args.votes,
                              llm_name=args.llm, log=print, implement=args.implement, executor=executor)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "config.json"),
                      {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
                      indent=1)
    try:
        summary = pipe.run(args.n)
    finally:
        executor.close()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    st = pipe.stats
    print(f"stages: {st.line()}")
    print(f"repairs: {st.repairs} calls, {st.repaired} candidates fixed by repair; rejected at: "
          f"{dict(Counter(st.rejected_at))}")
    for c in summary["candidates"]:
        print(f"  {c['index']:3d} {c['name'] or '?':<32} {c['reached']:<14} {c['reason'][:110]}")
    print(f"accepted into {library.path}: {', '.join(summary['accepted_tasks']) or 'none'}")
    div = summary["diversity"]
    print(f"diversity (mean pairwise distance): generated {div['generated']}, built-in {div['builtin']}, "
          f"built-in + generated {div['builtin_plus_generated']}")
    print(f"run folder: {out} ({summary['wall_time_s']} s)")
    return 0
