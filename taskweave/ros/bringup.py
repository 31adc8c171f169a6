"""`taskweave bringup sim|robot`: the launch files' node graph in one process, for pip-only installs.

`sim` runs sim + policy + planner (like `launch/sim.launch.py`); `robot` runs policy + planner
against a robot driver's topics (like `launch/robot.launch.py`, remap with `--remap FROM:=TO`).
The nodes get the same parameters as from the launch files and talk over real DDS, on a
`MultiThreadedExecutor`. With `--instruction` the run publishes it, waits for the episode to end
and exits 0 on success, 1 on failure, 3 when the run could not complete; otherwise it runs for `--duration` seconds (0: until Ctrl-C).

A robot-input (RGB) checkpoint reads cameras and `/joint_states`, not the state JSON: in the sim graph
the sim then publishes its cameras (`publish_cameras`) at the checkpoint's frame size unless
`--image-size` says otherwise; `--camera-topics` maps the checkpoint's cameras to image topics.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from taskweave.ros.params import PLANNER_PARAMETERS, POLICY_PARAMETERS, SIM_PARAMETERS

TASK_INSTRUCTION = "@task"
# flag -> (node parameter, nodes that get it)
_FLAGS = {
    "task": ("task", ("sim",)), "backend": ("backend", ("sim",)), "seed": ("seed", ("sim",)),
    "control_rate": ("control_rate", ("sim", "policy")), "time_scale": ("time_scale", ("sim",)),
    "publish_images": ("publish_images", ("sim",)), "image_size": ("image_size", ("sim",)),
    "publish_cameras": ("publish_cameras", ("sim",)), "camera_topics": ("camera_topics", ("policy",)),
    "camera": ("camera", ("sim",)), "command_timeout": ("command_timeout", ("sim",)),
    "checkpoint": ("checkpoint", ("policy",)), "device": ("device", ("policy",)),
    "policy_task": ("task", ("policy",)), "planner": ("planner", ("planner",)), "llm": ("llm", ("planner",)),
    "executor": ("executor", ("planner",)), "skill_timeout": ("skill_timeout", ("planner",)),
}


def add_bringup_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `taskweave bringup` (defaults are the nodes' declared parameter defaults)."""
    d = {k: v[0] for k, v in SIM_PARAMETERS.items()}
    p.add_argument("graph", choices=("sim", "robot"), help="sim: sim+policy+planner; robot: policy+planner")
    p.add_argument("--task", default=d["task"])
    p.add_argument("--backend", default=d["backend"], choices=("mujoco", "pybullet"))
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--control-rate", type=float, default=d["control_rate"], help="Hz")
    p.add_argument("--time-scale", type=float, default=d["time_scale"], help="sim speed-up over wall clock")
    p.add_argument("--publish-images", action="store_true")
    p.add_argument("--publish-cameras", action="store_true", default=None,
                   help="sim: publish the front and wrist cameras (on by default with a robot-input checkpoint)")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"camera image size (default: a robot-input checkpoint's frame size, else {d['image_size']})")
    p.add_argument("--camera", default=d["camera"])
    p.add_argument("--command-timeout", type=float, default=d["command_timeout"], help="watchdog, seconds")
    p.add_argument("--checkpoint", default=POLICY_PARAMETERS["checkpoint"][0], help="policy checkpoint")
    p.add_argument("--device", default=POLICY_PARAMETERS["device"][0])
    p.add_argument("--policy-task", default=POLICY_PARAMETERS["task"][0], help="task conditioning of the policy")
    p.add_argument("--camera-topics", default=POLICY_PARAMETERS["camera_topics"][0],
                   help="robot-input checkpoints: camera=topic,... (sensor_msgs/Image per camera)")
    p.add_argument("--planner", default=PLANNER_PARAMETERS["planner"][0],
                   choices=("tree", "clea", "iterative", "openloop"))
    from taskweave.commands.common import add_llm_arguments
    add_llm_arguments(p, PLANNER_PARAMETERS["llm"][0], "llama:MODEL | openai:MODEL | replay:FILE | offline")
    p.add_argument("--executor", default=PLANNER_PARAMETERS["executor"][0], choices=("scripted", "policy"))
    p.add_argument("--skill-timeout", type=float, default=PLANNER_PARAMETERS["skill_timeout"][0])
    p.add_argument("--instruction", nargs="?", const=TASK_INSTRUCTION, default=None,
                   help="run this instruction end to end and exit (no text: the sim task's own instruction)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until done or Ctrl-C)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="topic remapping (robot graph)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: environment)")
    p.add_argument("--localhost", action="store_true", help="discover peers on this machine only")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")


def node_parameters(args) -> dict:
    """{'sim'|'policy'|'planner': {parameter: value}} from parsed bringup flags."""
    out = {"sim": {}, "policy": {}, "planner": {}}
    for flag, (param, nodes) in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        for n in nodes:
            out[n][param] = value
    if getattr(args, "time_scale", 1.0) and "control_rate" in out["policy"]:
        # the policy must keep pace with a sped-up sim
        out["policy"]["control_rate"] = float(args.control_rate) * float(args.time_scale)
    return out


def robot_sim_parameters(policy_fn) -> dict:
    """Sim parameters a robot-input policy needs (its cameras published at its frame size); {} for others."""
    if not getattr(policy_fn, "robot", False):
        return {}
    return {"publish_cameras": True, "image_size": int(policy_fn.image_shape[0])}


def bringup_main(args=None) -> int:
    """Run the node graph (args: a parsed Namespace or an argv list); 0 on success or a clean stop."""
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="taskweave bringup", description=__doc__)
        add_bringup_arguments(parser)
        args = parser.parse_args(list(args) if args is not None else None)
    from taskweave.commands.common import llm_environment
    from taskweave.ros.common import configure_ros_env
    llm_environment(args)   # --llm-base-url / --llm-timeout / --llm-retries reach the planner node's client
    configure_ros_env(localhost_only=args.localhost, domain_id=args.domain_id)
    import rclpy
    from rclpy.context import Context
    return _run(args, rclpy, Context())


def _run(args, rclpy, ctx) -> int:
    from taskweave.ros.common import overrides, spin_nodes
    from taskweave.ros.planner_node import PlannerNode
    from taskweave.ros.policy_node import PolicyNode
    rclpy.init(args=[], context=ctx)
    values = node_parameters(args)
    cli = ["--ros-args"] + [x for r in args.remap for x in ("-r", r)] if args.remap else None
    nodes = []
    try:
        policy = PolicyNode(context=ctx, cli_args=cli, parameter_overrides=overrides(POLICY_PARAMETERS, values["policy"]))
        nodes.append(policy)
        if args.graph == "sim":
            from taskweave.ros.sim_node import SimNode
            sim_values = {**robot_sim_parameters(policy.policy_fn), **values["sim"]}
            nodes.insert(0, SimNode(context=ctx, parameter_overrides=overrides(SIM_PARAMETERS, sim_values)))
        planner = PlannerNode(context=ctx, cli_args=cli,
                              parameter_overrides=overrides(PLANNER_PARAMETERS, values["planner"]))
        nodes.append(planner)
        until, timeout = None, (args.duration or None)
        if args.instruction is not None:
            text = args.instruction
            if text == TASK_INSTRUCTION:
                if args.graph != "sim":
                    raise ValueError("--instruction without text needs the sim graph (it names the task)")
                text = nodes[0].env.instruction
            planner.instructions.put(text)
            until = lambda: planner.status.get("state") in ("succeeded", "failed", "error")  # noqa: E731
        print(f"taskweave bringup {args.graph}: {len(nodes)} nodes up"
              + (f"; instruction {text!r}" if args.instruction is not None else ""), file=sys.stderr)
        spin_nodes(nodes, context=ctx, until=until, timeout_s=timeout)
        status = dict(planner.status)
    finally:
        for n in reversed(nodes):
            n.close()
        for n in reversed(nodes):
            n.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return _report(args, status)


def _report(args, status: dict) -> int:
    """Print the outcome; the exit code (1 when an instruction was run and failed, 3 when it could not complete:
    the planner node's error state, or an LLM or executor failure)."""
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    elif args.instruction is not None:
        for s in status.get("steps", []):
            why = "" if s["success"] else f"  ({s['message']})"
            print(f"  {'ok  ' if s['success'] else 'FAIL'} {s['call']}{why}")
        err = f" ({status['error']})" if status.get("error") else ""
        print(f"{status.get('state')}: {status.get('instruction')!r}{err}")
    if args.instruction is None:
        return 0
    if status.get("success"):
        return 0
    incomplete = status.get("state") == "error" or bool((status.get("record") or {}).get("incomplete"))
    return 3 if incomplete else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m taskweave.ros.bringup sim ...`."""
    return bringup_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
