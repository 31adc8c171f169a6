"""`taskweave models [--json]`: the local language models (registry packages, checked by sha256)."""
from __future__ import annotations

import json

HELP = "List the local language models: name, path, size, sha256, licence, chat template or base."


def add_arguments(p) -> None:
    """Flags of `taskweave models`."""
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args) -> int:
    """Print each known model with its install state (and the pip command when it is missing)."""
    from taskweave.planning.llm.models import list_models
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        if r["installed"] and r.get("verified"):
            print(f"{r['name']:<14} {r['template']:<5} {r['size'] / 1e6:6.1f} MB  sha256 {r['sha256'][:16]}  "
                  f"{r['licence']:<20} {r['path']}")
        else:
            why = r.get("error") or f"not installed: {r['install']}"
            print(f"{r['name']:<14} {r['template']:<5} {'-':>9}  sha256 {r['sha256'][:16]}  {r['licence']:<20} {why}")
    print("use one as --llm llama:NAME (or llama:/path/to/model.gguf)")
    return 0
