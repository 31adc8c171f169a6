"""The ROS policy node with a robot-input (RGB) policy: forward kinematics from /joint_states, camera images
and joint states over real DDS, refused inputs, the done head ending a skill, and the sim publishing its cameras.

The DDS helpers (Graph, a private domain per module) are tests/test_ros.py's.
"""
import json
import time

import numpy as np
import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed; pip install 'taskweave[ros]' (ros-rclpy wheels) to run the ROS tests")

from sensor_msgs.msg import Image, JointState  # noqa: E402

from test_ros import Graph, ros_env, wait_until  # noqa: E402,F401  (ros_env: the module's private DDS domain)
from taskweave.envs.observation import PROPRIO_DIM, proprio_features  # noqa: E402
from taskweave.ros.common import make_pub, overrides  # noqa: E402
from taskweave.ros.params import POLICY_PARAMETERS, SIM_PARAMETERS  # noqa: E402
from taskweave.sim import robot as R  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 40   # frames of the tiny checkpoint (its crop is 36)
SKILL = "pick(red_block)"


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


def random_arm(rng) -> np.ndarray:
    """Arm joint angles well inside the limits."""
    return R.ARM_LOWER + (R.ARM_UPPER - R.ARM_LOWER) * rng.uniform(0.15, 0.85, 7)


def joint_state(q9, names=None, extra=True) -> JointState:
    """A JointState of 9 positions, shuffled and with an unrelated joint, as a driver may send it."""
    names = list(names or (R.ARM_JOINTS + R.FINGER_JOINTS))
    pos = [float(v) for v in q9]
    if extra:
        names, pos = ["base_swivel"] + names, [0.3] + pos
    order = np.random.default_rng(1).permutation(len(names))
    m = JointState()
    m.name, m.position = [names[i] for i in order], [pos[i] for i in order]
    return m


def image(rgb, encoding="rgb8") -> Image:
    m = Image()
    m.height, m.width = rgb.shape[:2]
    m.encoding, m.is_bigendian, m.step = encoding, 0, rgb.shape[1] * 3
    m.data = np.ascontiguousarray(rgb).tobytes()
    return m


def recorder_policy_fn(done_after=None):
    """A TEST-ONLY robot-input policy_fn recording what it was handed: a small +x step, done after n calls."""
    calls = []

    def policy_fn(obs, skill):
        calls.append({k: (np.array(v) if not isinstance(v, str) else v) for k, v in obs.items()})
        return np.array([0.2, 0.0, 0.0, 0.0, -1.0]), done_after is not None and len(calls) >= done_after

    policy_fn.robot, policy_fn.cameras, policy_fn.image_shape = True, ("front", "wrist"), (SIZE, SIZE, 3)
    policy_fn.reset = lambda: None
    policy_fn.calls = calls
    return policy_fn


def policy_node(g, policy_fn=None, **params):
    from taskweave.ros.policy_node import PolicyNode
    return g.add(PolicyNode(context=g.ctx, policy_fn=policy_fn,
                            parameter_overrides=overrides(POLICY_PARAMETERS, {"control_rate": 20.0, **params})))


class Driver:
    """A robot driver stand-in on the probe node: publishes two cameras and joint states at 20 Hz."""

    def __init__(self, g, front, wrist, js, wrist_encoding="bgr8"):
        self.g, self.front, self.wrist, self.js, self.enc = g, front, wrist, js, wrist_encoding
        self.pubs = [make_pub(g.probe, t) for t in ("/camera/image_raw", "/wrist_camera/image_raw", "/joint_states")]
        self.timer = g.probe.create_timer(0.05, self.send)

    def send(self):
        wrist = self.wrist[..., ::-1] if self.enc == "bgr8" else self.wrist   # the driver sends BGR bytes
        for pub, msg in zip(self.pubs, (image(self.front), image(wrist, self.enc), self.js)):
            pub.publish(msg)

    def stop(self):
        self.timer.cancel()


def tiny_robot_checkpoint(path, text) -> str:
    """A tiny random robot-input checkpoint (front + wrist, proprio, MiniLM text, a done head that never fires)."""
    import torch

    from taskweave.policies.diffusion import make_policy, save_checkpoint
    from taskweave.policies.diffusion.configuration import robot_config
    cfg = robot_config(proprio_dim=PROPRIO_DIM, action_dim=5, image_shape=(SIZE, SIZE, 3), crop_size=36,
                       vision_width=8, num_keypoints=4, rgb_feature_dim=8, down_dims=(16, 32),
                       diffusion_step_embed_dim=16, skill_cond_dim=8, done_hidden_dim=16, obs_horizon=2,
                       pred_horizon=8, action_horizon=4, num_train_timesteps=20, num_inference_steps=2)
    torch.manual_seed(0)
    stats = {"proprio": {"min": -torch.ones(PROPRIO_DIM) * 3, "max": torch.ones(PROPRIO_DIM) * 3},
             "action": {"min": -torch.ones(5), "max": torch.ones(5)}}
    policy = make_policy(cfg, [text], stats=stats)
    with torch.no_grad():   # P(done) ~ 0: the node keeps acting on every period
        last = [m for m in policy.done_head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.fill_(-20.0)
    return save_checkpoint(str(path), policy, step=0, skills=[text], tasks=[])


# ---------------------------------------------------------------- without DDS

def test_forward_kinematics_from_joint_states_equals_the_backends_proprio():
    from taskweave.envs import make_env
    from taskweave.ros.kinematics import PandaKinematics
    rng = np.random.default_rng(7)
    fk = PandaKinematics()
    env = make_env("BlockInBowl", "mujoco")
    try:
        env.reset(seed=0)
        b = env.backend
        for _ in range(4):
            b.reset_robot(random_arm(rng))
            q = b.joint_positions()
            js = joint_state(q)
            got = fk.proprio_from_joint_state(js.name, js.position)
            want = proprio_features(b)
            assert got.shape == (PROPRIO_DIM,)
            assert np.abs(got[7:10] - want[7:10]).max() < 1e-4, "TCP position (m)"
            assert np.abs(got[10:16] - want[10:16]).max() < 1e-4, "TCP rotation 6-D"
            np.testing.assert_allclose(got[[*range(7), 16]], want[[*range(7), 16]], atol=1e-6)
        assert abs(got[16] - 2 * R.FINGER_MAX) < 1e-6   # finger width: the two finger joints summed
    finally:
        env.close()
        fk.close()


def test_images_are_decoded_resized_and_refused_by_encoding():
    from taskweave.ros.robot_inputs import ImageError, decode_image, fit_image, parse_camera_topics
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    padded = np.concatenate([rgb, np.zeros((6, 2, 3), np.uint8)], axis=1)       # rows 30 bytes apart
    assert np.array_equal(decode_image("rgb8", 6, 8, 30, padded.tobytes()), rgb)
    assert np.array_equal(decode_image("bgr8", 6, 8, 24, rgb[..., ::-1].tobytes()), rgb)
    for enc, h, step, data, match in (("mono8", 6, 24, rgb.tobytes(), "encoding"),
                                      ("rgb8", 6, 20, rgb.tobytes(), "step"),
                                      ("rgb8", 7, 24, rgb.tobytes(), "bytes")):
        with pytest.raises(ImageError, match=match):
            decode_image(enc, h, 8, step, data)
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)                     # 12x16 -> 6x8: 2x2 means
    assert np.array_equal(fit_image(big, (6, 8, 3)), rgb)
    assert np.array_equal(fit_image(rgb, (12, 16, 3)), big)                  # upscaling repeats pixels
    assert fit_image(rgb, (5, 5, 3)).shape == (5, 5, 3)
    assert parse_camera_topics("front=/a, wrist=/b/c") == {"front": "/a", "wrist": "/b/c"}
    with pytest.raises(ValueError):
        parse_camera_topics("front:/a")


def test_policy_done_ends_the_skill_scored_by_the_postcondition():
    """The planner's policy executor: a done from the policy node ends the skill; the postcondition scores it."""
    from types import SimpleNamespace

    from taskweave.envs import make_env
    from taskweave.ros.common import Latest
    from taskweave.ros.ros_executor import RosSkillExecutor
    from taskweave.ros.state_json import symbolic_to_dict
    env = make_env("BlockInBowl", "mujoco")
    try:
        env.reset(seed=0)
        st = symbolic_to_dict(env.symbolic_state())
        block = next(n for n, o in st["objects"].items() if o["shape"] != "container")
    finally:
        env.close()
    call = f"pick({block})"
    import threading
    state, done = Latest(), Latest()
    link = SimpleNamespace(state=state, done=done, stop=threading.Event(), published=[])
    link.publish_current = link.published.append

    def sim():   # states at 50 Hz, the arm high; the policy says done after 5 states; the block is never held
        for seq in range(60):
            state.set({**st, "seq": seq, "robot": [0.4, 0.0, 0.3, 0.0, 1.0, 0.08, -1.0], "watchdog": {"state": "active"}})
            if seq == 5:
                done.set({"skill": call, "stamp": time.time()})
            time.sleep(0.02)

    state.set({**st, "seq": 0, "robot": [0.4, 0.0, 0.3, 0.0, 1.0, 0.08, -1.0]})
    t = threading.Thread(target=sim, daemon=True)
    t.start()
    r = RosSkillExecutor(link, "policy", "x", skill_timeout=5.0).execute(call)
    t.join()
    assert (r.success, r.failure) == (False, "grasp_failed") and "the policy said done" in r.message, r
    assert 6 <= r.steps < 59 and link.published == [call, ""]   # after the done, before the states ran out


def test_bringup_gives_the_sim_the_cameras_a_robot_policy_needs():
    import argparse

    from taskweave.ros.bringup import add_bringup_arguments, node_parameters, robot_sim_parameters
    parser = argparse.ArgumentParser()
    add_bringup_arguments(parser)
    values = node_parameters(parser.parse_args(["sim", "--camera-topics", "front=/cam/front,wrist=/cam/wrist"]))
    assert "publish_cameras" not in values["sim"] and "image_size" not in values["sim"]   # left to the checkpoint
    assert values["policy"]["camera_topics"] == "front=/cam/front,wrist=/cam/wrist"
    assert robot_sim_parameters(recorder_policy_fn()) == {"publish_cameras": True, "image_size": SIZE}
    assert robot_sim_parameters(lambda obs, skill: np.zeros(5)) == {}
    given = node_parameters(parser.parse_args(["sim", "--publish-cameras", "--image-size", "64"]))["sim"]
    assert {**robot_sim_parameters(recorder_policy_fn()), **given}["image_size"] == 64   # flags win


# ---------------------------------------------------------------- over DDS

def test_robot_policy_node_acts_on_camera_and_joint_state_topics(graph, tmp_path):
    """A real tiny robot-input checkpoint: the node builds proprio by FK and frames from the topics and commands."""
    from taskweave.ros.kinematics import PandaKinematics
    from taskweave.ros.robot_inputs import fit_image
    from taskweave.sim.control import LEASH, MAX_DPOS
    from taskweave.sim.geometry import top_down_yaw
    text = "pick the red block"   # skill_sentence(pick(red_block)) without a symbolic state
    path = tiny_robot_checkpoint(tmp_path / "robot.pt", text)
    policy = policy_node(graph, checkpoint=path, device="cpu")
    assert policy.robot and set(policy.camera_topics) == {"front", "wrist"}
    inner, refs = policy.policy_fn, []

    def spy(obs, skill):   # the real checkpoint's policy_fn, recording the reference target it is given
        refs.append(list(obs["ee_target"]))
        return inner(obs, skill)
    with policy.lock:
        policy.policy_fn = spy
    rng = np.random.default_rng(3)
    q9 = np.concatenate([R.HOME_Q + rng.uniform(-0.2, 0.2, 7), [0.02, 0.02]])
    front = rng.integers(0, 256, (2 * SIZE, 2 * SIZE, 3), dtype=np.uint8)       # resized by the node
    wrist = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)               # sent as bgr8
    graph.listen("/taskweave/ee_command")
    graph.listen("/taskweave/skill_done")
    driver = Driver(graph, front, wrist, joint_state(q9))
    graph.publish("/taskweave/current_skill", SKILL)
    wait_until(lambda: len(graph.got["/taskweave/ee_command"]) >= 3, 30, "ee commands from the robot-input policy")
    driver.stop()
    with policy.lock:
        seen = policy.last_input
    assert policy.errors == 0 and policy.input_errors == 0 and policy.sentence == (SKILL, text)
    assert seen["skill_text"] == text and text in inner.runner.skills
    fk = PandaKinematics()
    want = fk.proprio(q9)
    np.testing.assert_allclose(seen["proprio"], want, atol=1e-6)
    assert np.array_equal(seen["rgb:front"], fit_image(front, (SIZE, SIZE, 3)))
    assert np.array_equal(seen["rgb:wrist"], wrist)
    # the skill starts from the measured TCP (forward kinematics of the joint states), then from the node's
    # own last target: one delta step on, never further than the leash from the TCP
    tcp, quat = fk.tcp_pose(q9[:7])
    fk.close()
    np.testing.assert_allclose(refs[0], [*tcp, top_down_yaw(quat)], atol=1e-9)
    for before, after in zip(refs, refs[1:]):
        assert np.abs(np.subtract(after[:3], before[:3])).max() <= MAX_DPOS + 1e-9
        assert np.linalg.norm(np.subtract(after[:3], tcp)) <= LEASH + 1e-9
    assert len(refs) >= 3 and not graph.got["/taskweave/skill_done"] and policy.done_skill is None


def test_bad_image_encoding_or_joint_names_are_logged_and_send_no_command(graph):
    fn = recorder_policy_fn()
    policy = policy_node(graph, fn)
    graph.listen("/taskweave/ee_command")
    q9 = np.concatenate([R.HOME_Q, [0.04, 0.04]])
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    graph.publish("/taskweave/current_skill", SKILL)
    driver = Driver(graph, rgb, rgb, joint_state(q9), wrist_encoding="mono8")      # the wrist camera: mono8
    wait_until(lambda: policy.input_errors >= 3, 10, "refused wrist images")
    time.sleep(0.3)
    assert any("encoding 'mono8'" in why for _, why in policy.inputs.errors)
    assert not graph.got["/taskweave/ee_command"] and not fn.calls and policy.waiting == "no wrist camera frame"
    driver.stop()
    time.sleep(0.7)   # the good joint states of this phase grow older than obs_timeout
    wrong = [f"joint{i}" for i in range(1, 10)]                                    # a driver with other names
    driver = Driver(graph, rgb, rgb, joint_state(q9, names=wrong), wrist_encoding="rgb8")
    wait_until(lambda: any(w == "joint_states" for w, _ in policy.inputs.errors), 10, "refused joint states")
    time.sleep(0.3)
    assert not graph.got["/taskweave/ee_command"] and not fn.calls
    assert any("lacks ['panda_joint1'" in why for w, why in policy.inputs.errors if w == "joint_states")
    driver.stop()
    time.sleep(0.1)
    driver = Driver(graph, rgb, rgb, joint_state(q9), wrist_encoding="rgb8")       # good inputs: it acts again
    wait_until(lambda: graph.got["/taskweave/ee_command"], 10, "a command once the inputs are good")
    driver.stop()
    assert fn.calls and fn.calls[-1]["proprio"].shape == (PROPRIO_DIM,)


def test_done_head_publishes_skill_done_once_and_holds_the_last_target(graph):
    fn = recorder_policy_fn(done_after=3)
    policy = policy_node(graph, fn)
    graph.listen("/taskweave/ee_command")
    graph.listen("/taskweave/skill_done")
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    driver = Driver(graph, rgb, rgb, joint_state(np.concatenate([R.HOME_Q, [0.04, 0.04]])), wrist_encoding="rgb8")
    graph.publish("/taskweave/current_skill", SKILL)
    wait_until(lambda: graph.got["/taskweave/skill_done"], 10, "the policy's done")
    n = len(graph.got["/taskweave/ee_command"])
    wait_until(lambda: len(graph.got["/taskweave/ee_command"]) >= n + 4, 10, "held commands")
    driver.stop()
    assert len(fn.calls) == 3 and policy.done_skill == SKILL
    assert [json.loads(m.data)["skill"] for m in graph.got["/taskweave/skill_done"]] == [SKILL]
    # the node's own target is the reference: +0.2 * 3 cm in x per call from the measured TCP (within the leash)
    refs = np.array([c["ee_target"] for c in fn.calls])
    np.testing.assert_allclose(np.diff(refs[:, 0]), 0.006, atol=1e-9)
    np.testing.assert_allclose(np.diff(refs[:, 1:], axis=0), 0.0, atol=1e-12)
    held = {(m.pose.position.x, m.pose.position.y, m.pose.position.z) for m in graph.got["/taskweave/ee_command"][n:]}
    assert len(held) == 1, "after done the node holds the last target"
    np.testing.assert_allclose(next(iter(held)), refs[-1][:3] + [0.006, 0, 0], atol=1e-9)


def test_sim_node_publishes_cameras_and_joint_states_for_a_robot_policy(graph):
    """The sim graph exercises the same path: sim cameras + joint states -> the policy node -> the sim follows."""
    from taskweave.ros.sim_node import SimNode
    sim = graph.add(SimNode(context=graph.ctx, parameter_overrides=overrides(
        SIM_PARAMETERS, {"time_scale": 2.0, "publish_cameras": True, "image_size": SIZE})))
    fn = recorder_policy_fn()
    policy = policy_node(graph, fn, control_rate=20.0)
    graph.listen("/taskweave/watchdog")
    with sim.lock:
        red = next(n for n in sim.env.object_names if "block" in n)
    graph.publish("/taskweave/current_skill", f"pick({red})")
    wait_until(lambda: len(fn.calls) >= 5, 30, "policy calls on the sim's camera and joint topics")
    wait_until(lambda: graph.last_json("/taskweave/watchdog")["state"] == "active", 10, "the sim to follow")
    obs = fn.calls[-1]
    assert obs["rgb:front"].shape == obs["rgb:wrist"].shape == (SIZE, SIZE, 3)
    assert obs["rgb:front"].std() > 1 and obs["rgb:wrist"].std() > 1 and not np.array_equal(obs["rgb:front"],
                                                                                          obs["rgb:wrist"])
    assert obs["skill_text"] == f"pick the {red.replace('_', ' ')}"
    with sim.lock:
        now = proprio_features(sim.env.backend)
    assert np.abs(obs["proprio"][7:10] - now[7:10]).max() < 0.1   # the TCP the sim reports, a few ticks apart
    assert policy.input_errors == 0 and policy.errors == 0
