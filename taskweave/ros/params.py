"""Declared parameters of every taskweave node, {name: (default, description)}; importable without rclpy.

The nodes declare exactly these (typed by the default); launch files and `taskweave bringup`
pass values for them; tests check the launch files against them.
"""
from __future__ import annotations

SIM_PARAMETERS = {
    "task": ("BlockInBowl", "task name (see `taskweave tasks`)"),
    "backend": ("mujoco", "physics engine: mujoco | pybullet"),
    "seed": (0, "scene seed"),
    "control_rate": (10.0, "control ticks per second of simulated time"),
    "time_scale": (1.0, "wall-clock speed-up: ticks run at control_rate * time_scale per second"),
    "publish_images": (False, "publish sensor_msgs/Image rgb8 on /camera/image_raw"),
    "publish_cameras": (False, "publish what a robot-input policy sees: the `camera` frames on /camera/image_raw "
                               "and the wrist camera's on /wrist_camera/image_raw (rgb8, image_size)"),
    "image_size": (128, "image width and height in pixels"),
    "camera": ("front", "camera of the scene spec"),
    "command_timeout": (0.2, "seconds without an ee_command before the watchdog holds the arm"),
    "frame_id": ("world", "frame of published poses"),
}

POLICY_PARAMETERS = {
    "checkpoint": ("", "policy checkpoint file or run folder ('' = no policy: never commands)"),
    "device": ("auto", "auto | cpu | cuda[:N]"),
    "control_rate": (10.0, "commands per second"),
    "task": ("", "task conditioning of the policy ('' = the task named in the state JSON)"),
    "use_ema": (True, "use the EMA weights of the checkpoint"),
    "num_inference_steps": (0, "diffusion sampling steps (0 = the checkpoint's default)"),
    "obs_timeout": (0.5, "seconds after which an observation is too old to act on"),
    "frame_id": ("world", "frame of the published TCP targets"),
    "camera_topics": ("front=/camera/image_raw,wrist=/wrist_camera/image_raw",
                      "robot-input checkpoints: camera=topic (sensor_msgs/Image) for each camera the policy sees"),
}

PLANNER_PARAMETERS = {
    "planner": ("tree", "tree | clea | iterative | openloop"),
    "llm": ("llama:smollm2-135m", "llama:MODEL (embedded local model, the default) | openai:MODEL | replay:FILE | "
                                  "offline (the symbolic oracle: not a language model, control-flow tests only)"),
    "executor": ("scripted", "scripted (skills run by the sim) | policy (skills run by the policy node)"),
    "skill_timeout": (60.0, "seconds a skill may take before it counts as failed (timeout)"),
    "settle_ticks": (3, "observations the postcondition must hold before a policy skill counts as done"),
    "state_timeout": (30.0, "seconds to wait for the first /taskweave/symbolic_state"),
}

# console script -> (module:function, declared parameters); the lead wires these into pyproject.
NODE_EXECUTABLES = {
    "taskweave-sim-node": ("taskweave.ros.sim_node:main", SIM_PARAMETERS),
    "taskweave-policy-node": ("taskweave.ros.policy_node:main", POLICY_PARAMETERS),
    "taskweave-planner-node": ("taskweave.ros.planner_node:main", PLANNER_PARAMETERS),
}
