"""ROS 2 nodes (sim, policy, planner), their topic contract and the one-process `taskweave bringup`.

Importing this package needs no rclpy; the node modules do (`pip install taskweave[ros]`).
"""
from taskweave.ros.params import NODE_EXECUTABLES, PLANNER_PARAMETERS, POLICY_PARAMETERS, SIM_PARAMETERS

__all__ = ["NODE_EXECUTABLES", "PLANNER_PARAMETERS", "POLICY_PARAMETERS", "SIM_PARAMETERS"]
