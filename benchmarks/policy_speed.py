"""Diffusion-policy speed: latency per action chunk (DDIM-10 and DDPM-100, batch 1 and 64) and training samples/s.

    python benchmarks/policy_speed.py [--device auto|cpu|cuda[:N]] [--json] [--config FILE] [--obs-mode state|rgb|robot]
                                      [--onnx auto|on|off]

Without --config the model is the default state config on CUDA and a smaller one (down_dims
64/128/256) on CPU so that a CPU run stays near two minutes; --preset full measures the real one.
Latency covers predict_action_chunk (observation encoding + all denoising steps + unnormalising),
after a warm-up call per batch size; median and p90 over repeats (fewer when a cell exceeds
--budget-s; the count is reported). Training samples/s covers forward, backward, AdamW and EMA on
a synthetic batch already on the device (no data loading). On CPU, with onnx and onnxruntime installed
(the `interop` extra), the same policy is exported as the unrolled DDIM graph of `taskweave export-policy`
and onnxruntime's latency (same thread count) is printed beside torch's, with the torch/onnxruntime ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from taskweave.envs.observation import PROPRIO_DIM
from taskweave.policies.device import select_device
from taskweave.policies.diffusion.configuration import DiffusionConfig
from taskweave.policies.diffusion.modeling import AUX_DIM, DiffusionPolicy
from taskweave.policies.train import EMA
from taskweave.sim.errors import UserError

REFERENCE_DDIM10_S = 0.1  # Chi et al.: DDIM-10 on an RTX 3080, batch 1


def device_name(device: torch.device) -> str:
    """Human-readable name of the CPU or GPU behind device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, budget_s: float) -> list[float]:
    """Run fn up to repeats times (at least once, stopping early past budget_s); return seconds per call."""
    times: list[float] = []
    while len(times) < repeats:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return times


def p90(xs: list[float]) -> float:
    """90th percentile (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(0.9 * len(s) + 0.5)) - 1))]


def make_batch(cfg: DiffusionConfig, b: int, device: torch.device, with_action: bool = False) -> dict:
    """A random batch shaped like the dataset's."""
    if cfg.obs_mode == "robot":   # what a robot senses: camera frames and proprio, the skill sentence
        batch = {f"rgb:{c}": torch.randint(0, 256, (b, cfg.obs_horizon, *cfg.image_shape), dtype=torch.uint8,
                                           device=device) for c in cfg.cameras}
        batch["proprio"] = torch.rand(b, cfg.obs_horizon, cfg.proprio_dim, device=device)
        batch["skill_id"] = torch.randint(0, cfg.num_skills, (b,), device=device)
        if with_action:
            batch["action"] = torch.rand(b, cfg.pred_horizon, cfg.action_dim, device=device) * 2 - 1
            batch["done"] = (torch.rand(b, cfg.pred_horizon, device=device) > 0.9).float()
            batch["aux_target"] = torch.rand(b, AUX_DIM, device=device) * 0.2 - 0.1
        return batch
    batch = {"state": torch.rand(b, cfg.obs_horizon, cfg.state_dim, device=device),
             "skill_id": torch.randint(0, cfg.num_skills, (b,), device=device),
             "task_id": torch.randint(0, cfg.num_tasks, (b,), device=device)}
    if cfg.obs_mode == "rgb":
        batch["rgb"] = torch.randint(0, 256, (b, cfg.obs_horizon, *cfg.image_shape), dtype=torch.uint8, device=device)
    if with_action:
        batch["action"] = torch.rand(b, cfg.pred_horizon, cfg.action_dim, device=device) * 2 - 1
    return batch


def bench_latency(policy: DiffusionPolicy, batch_sizes, samplers, device, repeats, budget_s, amp) -> list[dict]:
    """Latency rows per (batch size, sampler)."""
    rows = []
    policy.eval()
    for b in batch_sizes:
        batch = make_batch(policy.config, b, device)
        warm = True
        for sampler, steps in samplers:
            def call():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    policy.predict_action_chunk(batch, sampler=sampler, num_inference_steps=steps)
            if warm:  # one warm-up per batch size: both samplers run the same network shapes
                call()
                warm = False
            ts = timed(call, device, repeats, budget_s)
            rows.append({"batch": b, "sampler": f"{sampler.upper()}-{steps}", "n": len(ts),
                         "median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * p90(ts),
                         "per_sample_ms": 1e3 * statistics.median(ts) / b})
    return rows


def bench_onnxruntime(policy: DiffusionPolicy, batch_sizes, steps: int, repeats: int, budget_s: float,
                      threads: int) -> list[dict]:
    """Latency rows of the policy's unrolled DDIM-steps ONNX graph under onnxruntime (CPU), per batch size."""
    import tempfile

    from taskweave.policies.interop.onnx_export import example_inputs, export_sampler, session

    cpu = torch.device("cpu")
    policy = policy.to(cpu).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "policy.onnx")
        export_sampler(policy, path, steps)
        sess = session(path, threads)
        for b in batch_sizes:
            feeds = {k: v.numpy() for k, v in example_inputs(policy, b).items()}
            feeds["noise"] = torch.randn(b, policy.config.pred_horizon, policy.config.action_dim).numpy()
            sess.run(None, feeds)  # warm-up
            ts = timed(lambda: sess.run(None, feeds), cpu, repeats, budget_s)
            rows.append({"batch": b, "sampler": f"DDIM-{steps}", "runtime": "onnxruntime", "n": len(ts),
                         "median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * p90(ts),
                         "per_sample_ms": 1e3 * statistics.median(ts) / b})
    return rows


def _onnx_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def bench_training(policy: DiffusionPolicy, batch_size: int, steps: int, device, amp) -> dict:
    """Training throughput on a fixed synthetic batch."""
    cfg = policy.config
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                            foreach=True)
    ema = EMA(policy.parameters(), cfg.ema_max_decay, cfg.ema_power)
    batch = make_batch(cfg, batch_size, device, with_action=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = policy(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip_norm)
        opt.step()
        ema.step(policy.parameters())

    step()
    ts = timed(step, device, steps, budget_s=float("inf"))
    med = statistics.median(ts)
    return {"batch": batch_size, "steps": len(ts), "median_step_ms": 1e3 * med, "samples_per_s": batch_size / med}


def main(argv=None) -> int:
    """Run the benchmark and print a table (or JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--config", help="DiffusionConfig JSON (default: the default state config)")
    ap.add_argument("--preset", default="auto", choices=("auto", "full", "small"),
                    help="model size without --config: full = DiffusionConfig defaults (down_dims 256/512/1024), "
                         "small = down_dims 64/128/256; auto = full on CUDA, small on CPU")
    ap.add_argument("--obs-mode", choices=("state", "rgb", "robot"), help="override the config's obs_mode")
    ap.add_argument("--state-dim", type=int, default=32, help="state vector size (robot 7 + skill features)")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--repeats", type=int, help="timed calls per cell (default 10 on CUDA, 3 on CPU)")
    ap.add_argument("--budget-s", type=float, default=10.0, help="stop repeating a cell after this many seconds")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, help="timed training steps (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--onnx", default="auto", choices=("auto", "on", "off"),
                    help="also time onnxruntime on the exported DDIM graph (auto: on CPU when onnxruntime is installed)")
    args = ap.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before we add our own load
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dev = select_device(args.device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cuda = dev.type == "cuda"
    repeats = args.repeats or (10 if cuda else 3)
    train_steps = args.train_steps or (20 if cuda else 3)
    preset = args.preset if args.preset != "auto" else ("full" if cuda else "small")
    if args.config:
        cfg, preset = DiffusionConfig.load(args.config), f"config {args.config}"
    else:
        cfg = DiffusionConfig() if preset == "full" else DiffusionConfig(down_dims=(64, 128, 256))
    changes = dict(state_dim=args.state_dim, action_dim=5, num_tasks=cfg.num_tasks or 8,
                   num_skills=cfg.num_skills or 32)
    mode = args.obs_mode or cfg.obs_mode
    if mode == "rgb":
        changes.update(obs_mode="rgb", image_shape=cfg.image_shape or (96, 96, 3))
    if mode == "robot":   # the robot-input policy: frames of the collect default size, 17-d proprio
        changes.update(obs_mode="robot", image_shape=cfg.image_shape or (64, 64, 3), proprio_dim=PROPRIO_DIM)
    cfg = cfg.replace(**changes)
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).to(dev)
    n_params = sum(p.numel() for p in policy.parameters())
    amp = args.amp and cuda
    samplers = [("ddim", cfg.num_inference_steps), ("ddpm", cfg.num_train_timesteps)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    lat = bench_latency(policy, batch_sizes, samplers, dev, repeats, args.budget_s, amp)
    use_onnx = cfg.obs_mode != "robot" and (args.onnx == "on" or (args.onnx == "auto" and not cuda
                                                                  and _onnx_available()))
    ort_rows = (bench_onnxruntime(policy, batch_sizes, cfg.num_inference_steps, repeats, args.budget_s,
                                  torch.get_num_threads()) if use_onnx else [])
    policy.to(dev)
    tr = bench_training(policy, args.train_batch, train_steps, dev, amp)
    by = {(r["batch"], r["sampler"]): r for r in lat}
    ddim, ddpm = f"DDIM-{cfg.num_inference_steps}", f"DDPM-{cfg.num_train_timesteps}"
    ratios = {}
    for b in batch_sizes:
        if (b, ddim) in by and (b, ddpm) in by:
            ratios[f"{ddpm}/{ddim} latency, batch {b}"] = by[(b, ddpm)]["median_ms"] / by[(b, ddim)]["median_ms"]
    if len(batch_sizes) > 1:
        lo, hi = min(batch_sizes), max(batch_sizes)
        for s in (ddim, ddpm):
            ratios[f"{s} per-sample speed-up, batch {hi} vs {lo}"] = (
                by[(lo, s)]["per_sample_ms"] / by[(hi, s)]["per_sample_ms"])
    for r in ort_rows:
        if (r["batch"], ddim) in by:
            ratios[f"torch/onnxruntime {ddim} latency, batch {r['batch']}"] = (
                by[(r["batch"], ddim)]["median_ms"] / r["median_ms"])
    if (1, ddim) in by:
        ratios[f"{ddim} batch-1 latency / 0.1 s (RTX 3080, Chi et al.)"] = (
            by[(1, ddim)]["median_ms"] / 1e3 / REFERENCE_DDIM10_S)
    report = {"device": device_name(dev), "device_type": dev.type, "torch": torch.__version__,
              "load_avg_1m": load, "preset": preset, "threads": torch.get_num_threads(), "obs_mode": cfg.obs_mode,
              "down_dims": list(cfg.down_dims), "params_m": n_params / 1e6, "amp_bf16": amp, "latency": lat, "onnxruntime_latency": ort_rows, "training": tr,
              "ratios": ratios}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"device: {report['device']} [{dev.type}], torch {torch.__version__}, {report['threads']} threads, "
          f"bf16={amp}")
    if load is not None and dev.type == "cpu" and load > (os.cpu_count() or 1) * 0.75:
        hint = " (try --threads 1)" if torch.get_num_threads() > 1 else ""
        print(f"note: 1-min load average {load:.1f} on {os.cpu_count()} CPUs before timing: figures are "
              f"contended{hint}")
    print(f"model ({preset}): obs_mode={cfg.obs_mode}, down_dims={list(cfg.down_dims)}, {n_params / 1e6:.1f} M params, "
          f"state_dim={cfg.state_dim}, horizons obs/pred/act={cfg.obs_horizon}/{cfg.pred_horizon}/{cfg.action_horizon}")
    print(f"{'batch':>5} {'sampler':>9} {'runtime':>11} {'n':>3} {'median ms':>10} {'p90 ms':>10} {'ms/sample':>10}")
    for r in lat + ort_rows:
        print(f"{r['batch']:>5} {r['sampler']:>9} {r.get('runtime', 'torch'):>11} {r['n']:>3} {r['median_ms']:>10.1f} "
              f"{r['p90_ms']:>10.1f} {r['per_sample_ms']:>10.2f}")
    print(f"training: batch {tr['batch']}, {tr['steps']} steps, {tr['median_step_ms']:.0f} ms/step, "
          f"{tr['samples_per_s']:.1f} samples/s")
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
