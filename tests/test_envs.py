"""Task library, gymnasium envs, determinism, perturbations and bad input."""
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from taskweave.envs import TASKS, UnknownTaskError, get_task, gym_id, make_env, parse_perturbations
from taskweave.envs.oracle import run_oracle_episode
from taskweave.envs.perturb import PerturbationError
from taskweave.envs.predicates import P
from taskweave.sim import UnknownBackendError

BACKENDS = ("mujoco", "pybullet")


def test_library_has_enough_tasks_and_long_horizon_ones():
    assert len(TASKS) >= 12
    long = [n for n in TASKS if get_task(n).long_horizon]
    assert len(long) >= 4
    for name in long:
        task = get_task(name)
        task.reset(0)
        assert len(task.oracle_plan(_state_for(task, name))) >= 4, name


def _state_for(task, name):
    env = make_env(name, "mujoco", control="skill")
    env.reset(seed=0)
    st = env.symbolic_state()
    env.close()
    return st


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("control", ["ee_delta", "skill"])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_check_env_passes(task, backend, control):
    env = gym.make(gym_id(task), backend=backend, control=control)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("obs_mode", ["rgb", "rgbd"])
def test_image_observations(obs_mode):
    env = make_env("BlockInBowl", "mujoco", obs_mode=obs_mode, image_size=64)
    obs, _ = env.reset(seed=3)
    assert obs["rgb"].shape == (64, 64, 3) and obs["rgb"].dtype == np.uint8
    assert obs["rgb"].std() > 5  # a real picture, not a blank frame
    if obs_mode == "rgbd":
        assert obs["depth"].shape == (64, 64, 1) and 0.2 < float(obs["depth"].min()) < 3.0
    assert env.observation_space.contains(obs)
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_trajectory(backend):
    def trajectory():
        env = make_env("StackOnBlock", backend, control="skill")
        poses = []
        run_oracle_episode(env, 11, on_tick=lambda obs, a, call: poses.append(env.backend.object_poses().copy()))
        env.close()
        return np.array(poses)

    a, b = trajectory(), trajectory()
    assert a.shape == b.shape and len(a) > 20
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    env = make_env("BlockInBowl", "mujoco")
    o1, _ = env.reset(seed=1)
    o2, _ = env.reset(seed=2)
    assert not np.allclose(o1["objects"], o2["objects"])
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_oracle_solves_a_long_task_and_progress_is_staged(backend):
    env = make_env("StackTower", backend, control="skill")
    env.reset(seed=5)
    assert env.progress() == 0.0
    seen = []
    for call in env.oracle_plan():
        obs, reward, term, trunc, info = env.step(str(call))
        assert info["skill_result"]["success"], info["skill_result"]["message"]
        seen.append(info["progress"])
    assert seen[-1] == 1.0 and term
    assert 0.0 < max(seen[:-1]) < 1.0  # partial credit on the way
    env.close()


def test_skill_mode_reports_failures_in_info():
    env = make_env("BlockInBowl", "mujoco", control="skill")
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("pick(golden_block)")
    assert info["failure"] == "invalid_args" and "golden_block" in info["skill_result"]["message"]
    obs, r, term, trunc, info = env.step("place(" + env.object_names[2] + ", " + env.object_names[0] + ")")
    assert info["failure"] == "not_holding"
    env.close()


def test_text_observation_names_objects_and_relations():
    env = make_env("StackTower", "mujoco", control="skill")
    env.reset(seed=2)
    text = env.text_observation()
    for name in env.object_names:
        assert name in text
    plan = env.oracle_plan()
    env.execute_skill(plan[0])
    env.execute_skill(plan[1])
    text = env.text_observation()
    top, base = plan[1].args
    assert f"on({top}, {base})" in text
    env.close()


def test_unknown_task_and_backend_and_modes_are_named():
    with pytest.raises(UnknownTaskError, match="StackTowr.*StackTower"):
        make_env("StackTowr")
    with pytest.raises(UnknownBackendError, match="'isaac'"):
        make_env("StackTower", "isaac")
    with pytest.raises(ValueError, match="obs_mode 'pointcloud'"):
        make_env("StackTower", obs_mode="pointcloud")
    env = make_env("StackTower")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="5 numbers"):
        env.step(np.zeros(3))
    env.close()


def test_perturbation_specs():
    ps = parse_perturbations("move:red_block@2,knock@3,remove@t40,grasp_fail:0.5@0")
    assert [p.kind for p in ps] == ["move", "knock", "remove", "grasp_fail"]
    assert ps[2].at_step == 40 and ps[3].prob == 0.5
    with pytest.raises(PerturbationError, match="explode"):
        parse_perturbations("explode@1")
    with pytest.raises(PerturbationError, match="expected kind"):
        parse_perturbations("knock")


def test_knock_perturbation_breaks_a_stack():
    env = make_env("StackTower", "mujoco", control="skill", perturbations="knock@2")
    env.reset(seed=4)
    plan = env.oracle_plan()
    assert env.execute_skill(plan[0]).success and env.execute_skill(plan[1]).success
    top, base = plan[1].args
    assert env.symbolic_state().holds(P("on", top, base))
    env.execute_skill(plan[2])  # the knock fires before this skill
    assert any("knocked" in e["event"] for e in env.events)
    assert not env.symbolic_state().holds(P("on", top, base))
    env.close()


def test_remove_hides_object_from_text():
    env = make_env("BlockInBowl", "mujoco", control="skill", perturbations="remove@0")
    env.reset(seed=1)
    env.before_skill()
    removed = env.events[0]["event"].split()[1]
    assert removed not in env.text_observation().split("Relations")[0]
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grasp_failure_injection_drops_the_object(backend):
    env = make_env("BlockInBowl", backend, control="skill", perturbations="grasp_fail:1.0@0")
    env.reset(seed=0)
    call = env.oracle_plan()[0]
    r = env.execute_skill(call)
    assert not r.success and r.failure == "grasp_slipped"
    assert any("injected grasp failure" in e["event"] for e in env.events)
    assert env.execute_skill(call).success  # the next grasp is normal again
    env.close()


def test_env_snapshot_restores_episode():
    env = make_env("StackOnBlock", "mujoco", control="skill")
    env.reset(seed=0)
    snap = env.snapshot()
    text = env.text_observation()
    env.execute_skill(env.oracle_plan()[0])
    assert env.text_observation() != text
    env.restore(snap)
    assert env.text_observation() == text
    assert env.skill_count == 1   # the physics is restored; the skill clock is not rewound
    env.close()


def test_restore_after_a_fired_perturbation_does_not_fire_it_again():
    env = make_env("StackTower", "mujoco", control="skill", perturbations="knock@2")
    env.reset(seed=4)
    plan = env.oracle_plan()
    assert env.execute_skill(plan[0]).success and env.execute_skill(plan[1]).success
    top, base = plan[1].args
    snap = env.snapshot()                          # the stack stands; the knock has not fired yet
    env.execute_skill(plan[2])                     # the knock fires before this skill
    assert [e["event"] for e in env.events] == [f"knocked {top} off {base}"]
    env.restore(snap)
    assert env.symbolic_state().holds(P("on", top, base))          # the world is back ...
    assert env.perturbations[0].fired and len(env.events) == 1     # ... the perturbation's bookkeeping is not
    assert env.skill_count == 3
    env.execute_skill(plan[2])                     # the same skill again: no second knock
    assert len(env.events) == 1 and env.symbolic_state().holds(P("on", top, base))
    env.close()


def test_skill_features_and_postconditions():
    env = make_env("BlockInBowl", "mujoco", control="skill")
    env.reset(seed=0)
    pick, place = env.oracle_plan()
    f = env.skill_features(place)
    assert f.shape == (16,) and f[9] == 2.0  # container target
    assert not env.skill_succeeded(pick)
    env.execute_skill(pick)
    assert env.skill_succeeded(pick)
    env.execute_skill(place)
    assert env.skill_succeeded(place) and env.is_success()
    env.close()
