"""`taskweave bringup sim|robot`: the ROS 2 node graph in one process (see `taskweave.ros.bringup`)."""
from __future__ import annotations

import importlib.util

from taskweave.sim.errors import UserError

HELP = "Run the ROS 2 node graph (sim + policy + planner, or policy + planner for a robot) in one process."


def add_arguments(p) -> None:
    """Flags of `taskweave bringup` (the nodes' declared parameter defaults)."""
    from taskweave.ros.bringup import add_bringup_arguments
    add_bringup_arguments(p)


def run(args) -> int:
    """Bring the graph up; needs rclpy (the `ros` extra)."""
    if importlib.util.find_spec("rclpy") is None:
        raise UserError('ROS 2 is not installed: pip install -e ".[ros]" (rclpy and the message packages)')
    from taskweave.ros.bringup import bringup_main
    return bringup_main(args)
