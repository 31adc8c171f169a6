"""Backends, control and scripted skills on both engines."""
import re

import numpy as np

import pytest

from taskweave.sim import ObjectSpec, SceneSpec, SpecError, UnknownBackendError, ZoneSpec, make_backend
from taskweave.sim.backend import SEG_OBJECT0, SEG_TABLE
from taskweave.sim.control import EEDeltaController
from taskweave.sim.skill_types import SkillArgumentError, SkillCall, SkillSyntaxError
from taskweave.sim.skills import make_skill

BACKENDS = ("mujoco", "pybullet")


def scene(friction=1.0):
    return SceneSpec(
        objects=[ObjectSpec("red_block", pos=(0.5, 0.0, 0.02), friction=friction),
                 ObjectSpec("blue_block", color="blue", pos=(0.45, 0.18, 0.02)),
                 ObjectSpec("green_bowl", "container", (0.055, 0.055, 0.045), "green", mass=0.6,
                            pos=(0.6, -0.18, 0.0225), category="container")],
        zones=[ZoneSpec("goal_zone", (0.4, -0.15), (0.06, 0.06), "yellow")])


@pytest.fixture(params=BACKENDS)
def world(request):
    b = make_backend(request.param)
    b.load(scene())
    ctrl = EEDeltaController(b)
    ctrl.reset()
    yield b, ctrl
    b.close()


def run(b, ctrl, text):
    """A scripted skill on a bare backend (no env, no skill counting): act until it reports its result."""
    skill = make_skill(SkillCall.parse(text), b)
    while (a := skill.act(b)) is not None:
        ctrl.apply(a)
    return skill.result


def test_unknown_backend_is_named():
    with pytest.raises(UnknownBackendError, match="'bullet3'"):
        make_backend("bullet3")


def test_bad_spec_is_named():
    b = make_backend("mujoco")
    with pytest.raises(SpecError, match="unknown shape 'cone'"):
        b.load(SceneSpec(objects=[ObjectSpec("x", shape="cone")]))
    with pytest.raises(SpecError, match="duplicate name"):
        b.load(SceneSpec(objects=[ObjectSpec("x"), ObjectSpec("x")]))


def test_pick_lifts_by_friction_with_both_fingers(world):
    b, ctrl = world
    z0 = b.object_pose("red_block")[0][2]
    r = run(b, ctrl, "pick(red_block)")
    assert r.success, r.message
    assert b.finger_contact("red_block") == (True, True)
    assert b.object_pose("red_block")[0][2] > z0 + 0.08
    # the object is held between the fingers, not attached: it stays near the TCP and the fingers are apart
    ee, _ = b.ee_pose()
    assert np.linalg.norm(b.object_pose("red_block")[0] - ee) < 0.03
    assert 0.03 < b.gripper_width() < 0.045


@pytest.mark.parametrize("backend", BACKENDS)
def test_slippery_object_is_not_lifted(backend):
    b = make_backend(backend)
    b.load(scene(friction=0.02))
    ctrl = EEDeltaController(b)
    ctrl.reset()
    r = run(b, ctrl, "pick(red_block)")
    assert not r.success and r.failure == "grasp_slipped"
    assert b.object_pose("red_block")[0][2] < 0.03
    b.close()


def test_pick_place_push_rotate(world):
    b, ctrl = world
    assert run(b, ctrl, "pick(red_block)").success
    r = run(b, ctrl, "place(red_block, green_bowl)")
    assert r.success, r.message
    p, _ = b.object_pose("red_block")
    assert np.hypot(p[0] - 0.6, p[1] + 0.18) < 0.045
    r = run(b, ctrl, "push(blue_block, goal_zone)")
    assert r.success, r.message
    p, _ = b.object_pose("blue_block")
    assert abs(p[0] - 0.4) < 0.06 and abs(p[1] + 0.15) < 0.06


def test_place_without_holding_is_a_named_failure(world):
    b, ctrl = world
    r = run(b, ctrl, "place(red_block, blue_block)")
    assert not r.success and r.failure == "not_holding"


def test_bad_skill_calls_are_named(world):
    b, ctrl = world
    for text, why in (("pick(purple_block)", "purple_block"), ("place(red_block)", "2 argument"),
                      ("pick(3.5)", "number"), ("fly(red_block)", "unknown skill 'fly'")):
        with pytest.raises(SkillArgumentError, match=re.escape(why)):
            make_skill(SkillCall.parse(text), b)
    r = run(b, ctrl, "place(red_block, (2.0, 0.0))")
    assert r.failure in ("not_holding", "unreachable")
    with pytest.raises(SkillSyntaxError):
        SkillCall.parse("__import__('os').system('true')")


def test_unreachable_target(world):
    b, ctrl = world
    assert run(b, ctrl, "pick(red_block)").success
    r = run(b, ctrl, "place(red_block, (1.2, 0.0))")
    assert r.failure == "unreachable"


def test_snapshot_restore_is_exact(world):
    b, ctrl = world
    run(b, ctrl, "pick(red_block)")
    snap = b.snapshot()
    before = b.object_poses().copy()
    q_before = b.joint_positions().copy()
    traj1 = []
    for _ in range(15):
        ctrl.apply([0.5, 0.2, -0.3, 0.1, 1.0])
        traj1.append(b.object_poses().copy())
    b.restore(snap)
    np.testing.assert_array_equal(b.object_poses(), before)
    np.testing.assert_array_equal(b.joint_positions(), q_before)
    traj2 = []
    for _ in range(15):
        ctrl.apply([0.5, 0.2, -0.3, 0.1, 1.0])
        traj2.append(b.object_poses().copy())
    np.testing.assert_allclose(np.array(traj1), np.array(traj2), atol=1e-9)


def test_restore_rejects_foreign_snapshot():
    a, c = make_backend("mujoco"), make_backend("pybullet")
    a.load(scene())
    c.load(scene())
    with pytest.raises(ValueError, match="MuJoCo"):
        a.restore(c.snapshot())
    with pytest.raises(ValueError, match="PyBullet"):
        c.restore(a.snapshot())


def test_render_rgb_depth_segmentation(world):
    b, _ = world
    f = b.render("top", 96, 96, depth=True, segmentation=True)
    assert f.rgb.shape == (96, 96, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (96, 96) and np.isfinite(f.depth).all()
    seg = f.segmentation
    assert (seg == SEG_TABLE).any()
    red = seg == SEG_OBJECT0  # red_block is the first object
    assert red.sum() > 3
    # the block is closer to the top camera than the table around it
    assert f.depth[red].mean() < f.depth[seg == SEG_TABLE].mean()
    with pytest.raises(KeyError, match="no camera named 'side'"):
        b.render("side")


def test_cartesian_control_tracks_targets(world):
    b, ctrl = world
    goal = np.array([0.55, 0.1, 0.2])
    for _ in range(30):
        ee, _ = b.ee_pose()
        d = np.clip((goal - b.ee_target_pos) / 0.03, -1, 1)
        ctrl.apply([*d, 0.0, -1.0])
    ee, _ = b.ee_pose()
    assert np.linalg.norm(ee - goal) < 0.01
    assert abs(b.ee_yaw()) < 0.05


def test_ee_targets_are_tracked_in_both_engines(world):
    """IK + joint control follow a sequence of small TCP target moves (the controller's regime) closely."""
    b, ctrl = world
    rng = np.random.default_rng(0)
    start, _ = b.ee_pose()
    target = start.copy()
    for k in range(12):
        target = np.clip(target + rng.uniform(-0.02, 0.02, 3), [0.35, -0.2, 0.1], [0.65, 0.2, 0.35])
        residual = b.set_ee_target(target, yaw=0.1 * k / 12)
        assert residual < 1e-3, f"IK residual {residual:.4f} m at move {k}"
        b.step(ctrl.substeps)
    b.step(ctrl.substeps * 3)  # let the joint controllers settle on the last target
    pos, _ = b.ee_pose()
    assert np.linalg.norm(pos - target) < 0.005
    assert abs(b.ee_yaw() - 0.1 * 11 / 12) < 0.03
