"""TaskEnv: a gymnasium.Env over one task on either backend, low-level or skill-level control."""
from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from taskweave.envs.observation import (MAX_OBJECTS, PROPRIO_DIM, ROBOT_CAMERAS, ROBOT_DIM, camera_key, policy_state,
                                         robot_features, robot_observation, skill_features, skill_sentence,
                                         skill_text)
from taskweave.envs.perturb import Perturbation, apply_perturbation, check_perturbations, parse_perturbations
from taskweave.envs.registry import get_task
from taskweave.envs.skill_check import precondition_failure, skill_succeeded
from taskweave.envs.symbolic import extract_state, state_to_text
from taskweave.sim import make_backend
from taskweave.sim.geometry import quat_yaw
from taskweave.sim.backend import BACKENDS, UnknownBackendError
from taskweave.sim.control import ACTION_DIM, EEDeltaController
from taskweave.sim.skill_types import SKILLS, SkillArgumentError, SkillCall, SkillResult, SkillSyntaxError
from taskweave.sim.skills import can_grasp, validate_call

OBS_MODES = ("state", "rgb", "rgbd", "robot")   # robot: cameras + proprioception only (no simulator ground truth)
CONTROLS = ("ee_delta", "skill")
SKILL_NAMES = tuple(SKILLS)
MAX_ENTITIES = 16
ROTATE_ANGLES = tuple(float(a) for a in np.linspace(-90, 90, MAX_ENTITIES))


class TaskEnv(gym.Env):
    """One task in one engine. control='ee_delta': an action is (dx, dy, dz, dyaw, gripper) for one
    control tick; control='skill': an action is one skill call, run to completion."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task="BlockInBowl", backend: str = "mujoco", obs_mode: str = "state",
                 control: str = "ee_delta", control_hz: float = 10.0, image_size: int = 128,
                 camera: str = "front", render_size: int = 256, max_steps: Optional[int] = None,
                 max_skills: Optional[int] = None, perturbations=None, render_mode: Optional[str] = "rgb_array",
                 skill_max_ticks: int = 400, cameras=ROBOT_CAMERAS) -> None:
        if backend not in BACKENDS:
            raise UnknownBackendError(f"unknown backend {backend!r} (choose one of: {', '.join(BACKENDS)})")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"unknown obs_mode {obs_mode!r} (choose one of: {', '.join(OBS_MODES)})")
        if control not in CONTROLS:
            raise ValueError(f"unknown control {control!r} (choose one of: {', '.join(CONTROLS)})")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r} (only 'rgb_array')")
        self.task = get_task(task)
        self.backend_name = backend
        self.backend = make_backend(backend)
        self.obs_mode, self.control, self.camera, self.cameras = obs_mode, control, camera, tuple(cameras)
        self.image_size, self.render_size, self.render_mode = int(image_size), int(render_size), render_mode
        self.controller = EEDeltaController(self.backend, control_hz)
        self.skill_max_ticks = skill_max_ticks
        self._max_steps_arg, self._max_skills_arg = max_steps, max_skills
        if isinstance(perturbations, str):
            perturbations = parse_perturbations(perturbations)
        self.perturbations = list(perturbations or [])
        self.observation_space = self._make_obs_space()
        if control == "ee_delta":
            self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), dtype=np.float32)
        else:
            self.action_space = spaces.MultiDiscrete([len(SKILL_NAMES), MAX_ENTITIES, MAX_ENTITIES])
        self.seed_value: Optional[int] = None
        self.events: list = []
        self.violations: list = []  # the task's rules broken this episode (each once): the episode has failed
        self._grasp_fail_armed = False
        self._loaded = False
        self.tick_callbacks: list = []  # called with the env after every control tick (video capture)

    # ---- spaces ------------------------------------------------------------------------
    def _make_obs_space(self) -> spaces.Dict:
        s = self.image_size
        if self.obs_mode == "robot":
            d = {camera_key(c): spaces.Box(0, 255, (s, s, 3), dtype=np.uint8) for c in self.cameras}
            return spaces.Dict({**d, "proprio": spaces.Box(-10.0, 10.0, (PROPRIO_DIM,), dtype=np.float32)})
        d = {"robot": spaces.Box(-10.0, 10.0, (ROBOT_DIM,), dtype=np.float32),
             "objects": spaces.Box(-10.0, 10.0, (MAX_OBJECTS, 8), dtype=np.float32),
             "object_mask": spaces.MultiBinary(MAX_OBJECTS)}
        if self.obs_mode in ("rgb", "rgbd"):
            d["rgb"] = spaces.Box(0, 255, (s, s, 3), dtype=np.uint8)
        if self.obs_mode == "rgbd":
            d["depth"] = spaces.Box(0.0, 10.0, (s, s, 1), dtype=np.float32)
        return spaces.Dict(d)

    # ---- gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Build the task's scene for a seed (a fresh random one when None)."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.seed_value = int(seed)
        spec = self.task.reset(self.seed_value)
        self.backend.load(spec)
        self.controller.reset()
        self.backend.step(20)  # let objects settle onto the table
        self._loaded = True
        self.steps = 0
        self.skill_count = 0
        self.events = []
        self.violations = []
        self._grasp_fail_armed = False
        self._fail_ticks = 0
        self._perturb_rng = np.random.default_rng(self.seed_value + 7919)
        for p in self.perturbations:
            p.fired = False
        self._oracle_len = len(self.task.oracle_plan(self.symbolic_state()))
        self.max_steps = self._max_steps_arg or max(60, 60 * self._oracle_len)
        self.max_skills = self._max_skills_arg or 2 * self._oracle_len + 4
        check_perturbations(self.perturbations, self)   # a bad target or schedule is bad input, not a failure later
        self._last_progress = self.progress()
        return self._obs(), self._info()

    def step(self, action):
        """One control tick (ee_delta) or one whole skill call (skill)."""
        self._require_loaded()
        info = {}
        st = None
        if self.control == "ee_delta":
            self.apply_action(action)
            st = self.symbolic_state()
            self.check_rules(st)   # (in skill control the skill loop checks them after the skill)
        else:
            result = self.execute_skill(self.decode_skill_action(action))
            info = {"skill": result.info.get("call", ""), "skill_result": result.to_dict(),
                    "failure": result.failure}
        st = st or self.symbolic_state()
        prog = self.task.progress(st)
        reward = prog - self._last_progress
        self._last_progress = prog
        success = self.task.success(st) and not self.violations
        truncated = (self.steps >= self.max_steps) if self.control == "ee_delta" else (self.skill_count >= self.max_skills)
        info.update(self._info(st, prog, success))
        terminated = success or bool(self.violations)   # a broken rule ends the episode, unsuccessful
        return self._obs(), float(reward), bool(terminated), bool(truncated and not terminated), info

    def render(self):
        """An RGB frame (render_size square) from the env's camera."""
        self._require_loaded()
        return self.backend.render(self.camera, self.render_size, self.render_size).rgb

    def close(self) -> None:
        """Release the physics engine."""
        if getattr(self, "backend", None) is not None:
            self.backend.close()
        self._loaded = False

    # ---- low level ---------------------------------------------------------------------
    def apply_action(self, action) -> None:
        """Advance one control tick under a low-level action (any control mode)."""
        self._require_loaded()
        for p in self.perturbations:
            if not p.fired and p.at_step is not None and self.steps >= p.at_step:
                self._fire(p)
        a = np.array(action, dtype=float).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"ee_delta action must have {ACTION_DIM} numbers, got shape {a.shape}")
        if self._grasp_fail_armed or self._fail_ticks:
            a = self._maybe_fail_grasp(a)
        self.controller.apply(a)
        self.steps += 1
        for cb in self.tick_callbacks:
            cb(self)

    def _maybe_fail_grasp(self, a: np.ndarray) -> np.ndarray:
        """An armed grasp failure opens the fingers once a held object is lifted."""
        if self._fail_ticks:
            self._fail_ticks -= 1
            a[4] = -1.0
            return a
        for o in self.backend.spec.objects:
            left, right = self.backend.finger_contact(o.name)
            if left and right and self.backend.object_pose(o.name)[0][2] > 0.07:
                self._grasp_fail_armed = False
                self._fail_ticks = 4
                self.events.append({"step": self.steps, "skill": self.skill_count,
                                    "event": f"injected grasp failure: {o.name} slipped"})
                a[4] = -1.0
                break
        return a

    def _fire(self, p: Perturbation) -> None:
        p.fired = True
        what = apply_perturbation(p, self, self._perturb_rng)
        self.events.append({"step": self.steps, "skill": self.skill_count, "event": what})

    # ---- skill level -------------------------------------------------------------------
    def decode_skill_action(self, action) -> SkillCall:
        """A skill call from a MultiDiscrete action, a SkillCall or its text."""
        if isinstance(action, SkillCall):
            return action
        if isinstance(action, str):
            return SkillCall.parse(action)
        a = np.asarray(action).reshape(-1)
        if a.shape != (3,):
            raise ValueError(f"skill action must be [skill, arg1, arg2], got {action!r}")
        ents = self.object_names + self.zone_names
        name = SKILL_NAMES[int(a[0]) % len(SKILL_NAMES)]
        first = ents[int(a[1])] if int(a[1]) < len(ents) else f"entity_{int(a[1])}"
        if name == "pick":
            return SkillCall(name, (first,))
        if name == "rotate":
            return SkillCall(name, (first, ROTATE_ANGLES[int(a[2]) % MAX_ENTITIES]))
        second = ents[int(a[2])] if int(a[2]) < len(ents) else f"entity_{int(a[2])}"
        return SkillCall(name, (first, second))

    def execute_skill(self, call, recorder=None, controller=None) -> SkillResult:
        """Run one skill call through the skill loop (`taskweave.envs.skill_loop`); bad calls give invalid_args.

        controller: what drives the arm (default: the scripted skills); recorder(obs, action, call), when
        given, is called before every control tick (demonstrations).
        """
        from taskweave.envs.skill_loop import run_skill_call
        return run_skill_call(self, call, controller, recorder)

    def check_call(self, call):
        """The call as a valid SkillCall for this scene, or (counted as a skill) an invalid_args result."""
        try:
            call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
            validate_call(call, self.backend.spec)
            return call
        except (SkillSyntaxError, SkillArgumentError) as e:
            self.skill_count += 1
            return SkillResult(False, "invalid_args", str(e), info={"call": str(call)})

    def check_preconditions(self, call: SkillCall, state=None) -> Optional[SkillResult]:
        """Why the world refuses a valid call before it starts (`hand_full`, `not_clear`), or None.

        The skill loop asks this for every controller, after the perturbations scheduled before the skill.
        """
        return precondition_failure(call, state if state is not None else self.symbolic_state())

    def check_rules(self, state=None) -> list:
        """Record the task's rules broken now (each once per episode); returns the newly broken ones.

        The skill loop calls this after every skill (and `step` after every ee_delta tick): a broken rule
        fails the episode (`is_success()` is False from then on), shows in `violations`, `info` and
        `text_observation()`.
        """
        rules = getattr(self.task, "rules", None)
        if not rules:
            return []
        st = state if state is not None else self.symbolic_state()
        seen = {v["rule"] for v in self.violations}
        new = [{"rule": str(r), "skill": self.skill_count, "step": self.steps}
               for r in self.task.broken_rules(st) if str(r) not in seen]
        self.violations.extend(new)
        return new

    def before_skill(self) -> None:
        """Fire perturbations scheduled before the current skill index (the skill loop calls this)."""
        for p in self.perturbations:
            if not p.fired and p.at_skill is not None and self.skill_count >= p.at_skill:
                self._fire(p)

    # ---- what planners and policies read -----------------------------------------------
    @property
    def instruction(self) -> str:
        """The task's language instruction for this episode."""
        return self.task.instruction

    @property
    def object_names(self) -> list:
        """Objects in the scene, in spec order."""
        return list(self.backend.spec.object_names)

    @property
    def graspable_names(self) -> list:
        """Objects the gripper can hold (`sim.skills.can_grasp`: not fixed, one side narrow enough)."""
        return [o.name for o in self.backend.spec.objects if can_grasp(o)]

    @property
    def zone_names(self) -> list:
        """Zones in the scene."""
        return [z.name for z in self.backend.spec.zones]

    def symbolic_state(self):
        """The current SymbolicState."""
        self._require_loaded()
        return extract_state(self.backend)

    def text_observation(self) -> str:
        """The symbolic state as text for a language model (with the task's rules and any it broke)."""
        return state_to_text(self.symbolic_state(), self.instruction, rules=getattr(self.task, "rules", ()),
                             broken=[v["rule"] for v in self.violations])

    def progress(self) -> float:
        """Staged progress in [0, 1]: fraction of goals satisfied."""
        return self.task.progress(self.symbolic_state())

    def is_success(self) -> bool:
        """Whether every goal holds (gripper empty) and no rule of the task was broken this episode."""
        return self.task.success(self.symbolic_state()) and not self.violations

    def oracle_plan(self) -> list:
        """The task oracle's skill calls from the current state."""
        return self.task.oracle_plan(self.symbolic_state())

    def skill_features(self, call) -> np.ndarray:
        """Fixed-size features of a skill call's object and target (policy conditioning)."""
        call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
        return skill_features(call, self.backend, self.symbolic_state())

    def skill_text(self, call) -> str:
        """The policy's language for a skill call (name and argument kinds)."""
        call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
        return skill_text(call, self.symbolic_state())

    def skill_sentence(self, call) -> str:
        """The skill as a sentence with its object names ('place the red block in the green bowl')."""
        return skill_sentence(call, self.symbolic_state())

    def policy_state(self, call) -> np.ndarray:
        """The policy's state vector for a skill (see taskweave.envs.observation.policy_state)."""
        return policy_state(self._state_obs()["robot"], self.skill_features(call))

    def skill_succeeded(self, call, before=None) -> bool:
        """Whether the skill's postcondition holds now (before: the state when it started)."""
        call = call if isinstance(call, SkillCall) else SkillCall.parse(str(call))
        return skill_succeeded(call, self.symbolic_state(), before)

    def low_level_obs(self) -> dict:
        """The state observation regardless of control mode."""
        return self._state_obs()

    def snapshot(self) -> dict:
        """The physics state (backend, gripper, progress, broken rules) for `restore`; no perturbation bookkeeping."""
        self._require_loaded()
        return {"backend": self.backend.snapshot(), "grip": self.controller.grip_closed,
                "progress": self._last_progress, "violations": list(self.violations)}

    def restore(self, snap: dict) -> None:
        """Return the physics to a snapshot of this episode; time and the perturbation schedule go on.

        The world's state is restored, the perturbation bookkeeping is not: the skill and tick counters
        (the perturbation clock) are not rewound, a perturbation that fired stays fired (it never fires
        again), an armed grasp failure stays armed or consumed as it is now, and the event log keeps
        everything that happened. An injected slip still in progress ends (it belonged to the undone state).
        """
        self._require_loaded()
        self.backend.restore(snap["backend"])
        self.controller.grip_closed = snap["grip"]
        self._fail_ticks = 0
        self._last_progress = snap["progress"]
        self.violations = list(snap.get("violations", ()))   # rules broken in the undone state were not broken

    # ---- internals ---------------------------------------------------------------------
    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("call reset() before using the environment")

    def _state_obs(self) -> dict:
        b = self.backend
        poses = b.object_poses()[:MAX_OBJECTS]
        n = len(poses)
        if getattr(self, "_sizes_spec", None) is not b.spec:  # per-object half extents, cached per scene
            self._sizes = np.array([(*o.footprint, o.half_height) for o in b.spec.objects[:MAX_OBJECTS]],
                                   dtype=np.float32).reshape(-1, 3)
            self._sizes_spec = b.spec
        yaw = quat_yaw(poses[:, 3:])
        rows = np.zeros((MAX_OBJECTS, 8), dtype=np.float32)
        rows[:n, :3] = poses[:, :3]
        rows[:n, 3] = np.sin(yaw)
        rows[:n, 4] = np.cos(yaw)
        rows[:n, 5:] = self._sizes
        np.clip(rows, -10.0, 10.0, out=rows)
        mask = np.zeros(MAX_OBJECTS, dtype=np.int8)
        mask[:n] = 1
        return {"robot": robot_features(b, self.controller.grip_closed), "objects": rows, "object_mask": mask}

    def _obs(self) -> dict:
        if self.obs_mode == "robot":
            return robot_observation(self.backend, self.cameras, self.image_size)
        obs = self._state_obs()
        if self.obs_mode != "state":
            f = self.backend.render(self.camera, self.image_size, self.image_size, depth=self.obs_mode == "rgbd")
            obs["rgb"] = f.rgb
            if self.obs_mode == "rgbd":
                obs["depth"] = np.clip(f.depth, 0.0, 10.0)[..., None].astype(np.float32)
        return obs

    def _info(self, st=None, progress=None, success=None) -> dict:
        st = st or self.symbolic_state()
        progress = self.task.progress(st) if progress is None else progress
        success = (self.task.success(st) and not self.violations) if success is None else success
        return {"progress": progress, "success": success, "steps": self.steps,
                "skills": self.skill_count, "instruction": self.instruction, "seed": self.seed_value,
                "events": list(self.events), "violations": list(self.violations)}


def make_env(task, backend: str = "mujoco", **kw) -> TaskEnv:
    """A TaskEnv for a task name or instance."""
    return TaskEnv(task=task, backend=backend, **kw)


__all__ = ["TaskEnv", "make_env", "OBS_MODES", "CONTROLS"]
