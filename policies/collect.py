"""Record oracle demonstrations (state, actions, skill text) into a zarr dataset (`taskweave collect` runs it).

A run holds the dataset folder's lock (`taskweave.sim.locks.FolderLock`) from start to finalize: a second
collect on the same --out refuses, naming the holder; a killed run's lock is taken over by the next one,
which first removes the temporaries the killed run left. Episodes run through the rollout executor
(`taskweave.sim.rollouts`: inline, local workers that die with the run, or Ray); a worker that dies mid-episode
only costs that episode, which runs again, and the driver alone writes, in seed order, so every episode is
stored exactly once.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np
from tqdm import tqdm

from taskweave.envs.observation import PROPRIO_LAYOUT, camera_key, policy_state
from taskweave.policies.dataset import DatasetError, DatasetWriter
from taskweave.policies.integrity import remove_partials
from taskweave.sim.errors import UserError
from taskweave.sim.locks import FolderLock
from taskweave.sim.rollouts import RolloutExecutor, make_executor

# Disjoint seed ranges per split (GenSim keeps train and test seeds apart in the same way).
SPLIT_SEED_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLITS = ("train", "val", "test")
OBS = ("state", "robot")      # --obs: the privileged state (and optional --rgb frames), or what a robot senses
ROBOT_IMAGE_SIZE = 64         # --image-size of robot frames: the CPU choice (GPU runs may take 96)
_ENVS: dict = {}


def split_seeds(split: str, n: int, attempts_factor: int = 3) -> list:
    """Candidate seeds of a split (more than n, since failed episodes are skipped)."""
    base = SPLIT_SEED_BASE[split]
    return list(range(base, base + max(n * attempts_factor, n + 5)))


def record_episode(task: str, backend: str, seed: int, rgb_size: int = 0, obs: str = "state",
                   image_size: int = ROBOT_IMAGE_SIZE) -> Optional[dict]:
    """Run the oracle on one seed, recording every control tick; None unless the episode succeeds.

    obs "robot" also records what a robot senses (`TaskEnv(obs_mode="robot")`: frames per camera at
    image_size, proprio) and names each segment's skill by its sentence (`env.skill_sentence`).
    """
    from taskweave.envs import make_env

    robot = obs == "robot"
    key = (task, backend, rgb_size, obs, image_size)
    env = _ENVS.get(key)
    if env is None:
        mode = "robot" if robot else "rgb" if rgb_size else "state"
        env = _ENVS[key] = make_env(task, backend, control="skill", obs_mode=mode,
                                    image_size=image_size if robot else rgb_size or 128)
    env.reset(seed=seed)
    segs = []  # (call text, states, actions, rgbs, ok)

    for _ in range(3):
        plan = env.oracle_plan()
        if not plan:
            break
        for call in plan:
            states, actions, rgbs = [], [], []
            text = env.skill_sentence(call) if robot else env.skill_text(call)

            def rec(obs, action, c):
                """Record one control tick of the running skill."""
                states.append(env.policy_state(c) if robot else policy_state(obs["robot"], env.skill_features(c)))
                actions.append(np.asarray(action, dtype=np.float32))
                if rgb_size or robot:
                    rgbs.append(obs if robot else obs["rgb"])   # robot: the rgb:<camera> frames and proprio

            r = env.execute_skill(call, recorder=rec)
            if states:
                segs.append((text, states, actions, rgbs, r.success))
            if not r.success:
                break
        if env.is_success():
            break
    if not env.is_success():
        return None
    keep = [s for s in segs if s[4]]  # drop the ticks of skills that failed and were retried
    if not keep:
        return None
    out = {"task": task, "seed": seed,
           "state": np.concatenate([np.stack(s[1]) for s in keep]),
           "action": np.concatenate([np.stack(s[2]) for s in keep]),
           "skills": [s[0] for s in keep for _ in s[1]],
           "segment_lengths": [len(s[1]) for s in keep]}
    if rgb_size:
        out["rgb"] = np.concatenate([np.stack(s[3]) for s in keep]).astype(np.uint8)
    if robot:
        ticks = [o for s in keep for o in s[3]]
        out["frames"] = {c: np.stack([o[camera_key(c)] for o in ticks]).astype(np.uint8) for c in env.cameras}
        out["proprio"] = np.stack([o["proprio"] for o in ticks]).astype(np.float32)
    return out


def collect(tasks: list, episodes: int, backend: str, out: str, val_episodes: Optional[int] = None,
            test_episodes: int = 0, rgb: int = 0, workers: int = 1, progress: bool = True, obs: str = "state",
            image_size: int = ROBOT_IMAGE_SIZE, executor: Optional[RolloutExecutor] = None) -> dict:
    """Collect successful oracle episodes for every task and split; resumable; finalises meta.json.

    obs "state" (default) records the privileged state (and --rgb frames); "robot" also records camera frames
    (image_size square) and proprio per tick, and the skill sentences as the segments' texts.
    Episodes run through `executor` (default: `make_executor(workers)`, closed at the end); which seeds are
    kept and the order they are stored in do not depend on it (see `_Stream`)."""
    from taskweave.envs import get_task
    if obs not in OBS:
        raise UserError(f"obs must be one of {', '.join(OBS)}, got {obs!r}")
    if obs == "robot" and rgb:
        raise UserError("--rgb records the privileged baseline's frames; robot observations (--obs robot) have "
                        "their own cameras at --image-size")
    if obs == "robot" and image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {image_size}")
    for t in tasks:
        get_task(t)  # unknown names fail here, before any work
    own = executor is None
    executor = make_executor(workers) if own else executor
    try:
        with FolderLock(out, "collect") as lock:
            removed = lock.clean_temporaries() + remove_partials(os.path.join(out, "data.zarr"))
            if removed:
                print(f"removed {len(removed)} temporary file(s) an interrupted run left in {out}", file=sys.stderr)
            return _collect(tasks, episodes, backend, out, val_episodes, test_episodes, rgb, executor, progress,
                            obs, image_size)
    finally:
        if own:
            executor.close()


class _Stream:
    """The episodes still wanted for one (task, split): seeds are tried in order and the first `need`
    successes are stored, in seed order, whatever finishes first; so the kept seeds and their order depend
    only on the seeds, never on the executor or its worker count."""

    def __init__(self, task: str, split: str, need: int, todo: list) -> None:
        self.task, self.split, self.need, self.todo = task, split, need, todo
        self.submitted: list = []   # seeds handed to the executor, in seed order
        self.results: dict = {}     # seed -> episode or None (failed), not yet committed
        self.pos = 0                # submitted[:pos] are committed or discarded
        self.kept = 0

    def deficit(self) -> int:
        """Successes still missing if every seed in flight succeeds."""
        hopeful = sum(1 for s in self.submitted[self.pos:] if self.results.get(s, True) is not None)
        return self.need - self.kept - hopeful

    def can_submit(self) -> bool:
        return self.deficit() > 0 and len(self.submitted) < len(self.todo)

    @property
    def done(self) -> bool:
        return self.kept >= self.need or (self.pos == len(self.submitted) == len(self.todo))


def _commit(streams: list, cur: int, writer: DatasetWriter, stats: dict, bar, want: dict) -> int:
    """Store the finished episodes that are next in seed order, stream after stream; returns the stream now
    being committed (len(streams) when all are complete)."""
    while cur < len(streams):
        st = streams[cur]
        while not st.done and st.pos < len(st.submitted) and st.submitted[st.pos] in st.results:
            seed = st.submitted[st.pos]
            res = st.results.pop(seed)
            st.pos += 1
            stats["attempted"] += 1
            if res is None:
                stats["failed"] += 1
                continue
            writer.add_episode(st.task, seed, res["state"], res["action"], res["skills"], rgb=res.get("rgb"),
                               split=st.split, segment_lengths=res["segment_lengths"], frames=res.get("frames"),
                               proprio=res.get("proprio"))
            st.kept += 1
            stats["kept"] += 1
            bar.update(1)
        if not st.done:
            return cur
        st.results.clear()
        if st.kept < st.need:
            have = want[st.split] - st.need + st.kept
            print(f"warning: {st.task} {st.split}: only {have}/{want[st.split]} successful episodes", file=sys.stderr)
        cur += 1
    return cur


def _collect(tasks, episodes, backend, out, val_episodes, test_episodes, rgb, executor, progress, obs="state",
             image_size=ROBOT_IMAGE_SIZE) -> dict:
    """collect() once the dataset folder is locked."""
    val = episodes // 10 if val_episodes is None else val_episodes
    want = {"train": episodes, "val": val, "test": test_episodes}
    writer = DatasetWriter(out, tasks=tasks, backend=backend, control_hz=10.0,
                           extra={"seed_bases": SPLIT_SEED_BASE, "state_layout": "robot(7) + skill_features(16) + object-TCP(3) + target-TCP(3)",
                                  "obs": obs, **({"skill_text": "sentence"} if obs == "robot" else {})},
                           proprio_layout=PROPRIO_LAYOUT if obs == "robot" else None)
    if writer.num_episodes and (writer.cameras is not None) != (obs == "robot"):
        have = "robot observations" if writer.cameras is not None else "no robot observations"
        raise DatasetError(f"{out}: the dataset has {have}; refusing to append --obs {obs} episodes "
                           f"(use the same --obs or another --out)")
    if writer.num_episodes and obs == "robot" and writer.camera_shape != (image_size, image_size, 3):
        raise DatasetError(f"{out}: the dataset's camera frames are {writer.camera_shape[0]}x{writer.camera_shape[1]}; "
                           f"refusing to append {image_size}x{image_size} ones (use the same --image-size or another --out)")
    if writer.num_episodes and writer.rgb_shape != ((rgb, rgb, 3) if rgb else None):
        have = f"{writer.rgb_shape[0]}x{writer.rgb_shape[1]} RGB frames" if writer.rgb_shape else "no RGB frames"
        asked = f"{rgb}x{rgb} RGB frames (--rgb {rgb})" if rgb else "no RGB frames"
        raise DatasetError(f"{out}: the dataset has {have}; refusing to append episodes with {asked} "
                           f"(use the same --rgb or another --out)")
    stats = {"attempted": 0, "kept": 0, "failed": 0, "skipped_existing": 0, "executor": executor.describe()}
    total = sum(want.values()) * len(tasks)
    bar = tqdm(total=total, desc=f"collect [{backend}]", unit="ep", file=sys.stderr, disable=not progress or None)
    streams = []
    for task in tasks:
        for split in SPLITS:
            have = sum(1 for e in writer.episodes if e["task"] == task and e["split"] == split)
            stats["skipped_existing"] += have
            bar.update(min(have, want[split]))
            todo = [s for s in split_seeds(split, want[split]) if not writer.has_episode(task, s)]
            streams.append(_Stream(task, split, max(0, want[split] - have), todo))
    window = max(2, 2 * executor.parallelism)
    owner, cur = {}, 0       # ticket -> (stream index, seed) of the jobs in flight; the stream being committed
    try:
        while True:
            cur = _commit(streams, cur, writer, stats, bar, want)
            if cur >= len(streams):
                break
            buffered = sum(len(st.results) for st in streams[cur:])
            for k in range(cur, len(streams)):   # keep the workers busy, the stream being committed first
                st = streams[k]
                while st.can_submit() and len(owner) + (buffered if k > cur else 0) < window:
                    seed = st.todo[len(st.submitted)]
                    st.submitted.append(seed)
                    owner[executor.submit(record_episode, st.task, backend, seed, rgb, obs, image_size)] = (k, seed)
            ticket, res = executor.next_done()
            k, seed = owner.pop(ticket)
            if k >= cur and not streams[k].done:   # else an extra seed tried in parallel: not needed
                streams[k].results[seed] = res
    finally:
        bar.close()
    meta = writer.finalize()
    stats["meta"] = meta
    stats["episodes"] = writer.num_episodes
    stats["retried"] = executor.retried
    return stats
