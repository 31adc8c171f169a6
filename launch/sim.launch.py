"""Simulated tabletop: sim + policy + planner (`ros2 launch launch/sim.launch.py task:=StackTower`).

Publish an instruction to run a task end to end:
    ros2 topic pub --once /taskweave/instruction std_msgs/msg/String "{data: 'put the blue block in the orange bowl'}"
and watch `/taskweave/status`. Without ROS 2 installed, `taskweave bringup sim` runs the same graph.
A robot-input (RGB) checkpoint reads the sim's cameras and joint states like a robot's driver topics:
pass `publish_cameras:=true image_size:=<its frame size, e.g. 96>` (`taskweave bringup` sets both itself).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _package():
    """'taskweave' when it is in the ament index, else None: pip console scripts are found on PATH."""
    try:
        from ament_index_python.packages import get_package_prefix
        get_package_prefix("taskweave")
        return "taskweave"
    except Exception:  # PackageNotFoundError, or no ament index at all
        return None


ARGUMENTS = {
    "task": ("BlockInBowl", "task name (see `taskweave tasks`)"),
    "backend": ("mujoco", "mujoco | pybullet"),
    "seed": ("0", "scene seed"),
    "control_rate": ("10.0", "control ticks per second of simulated time"),
    "time_scale": ("1.0", "simulation speed-up over the wall clock"),
    "publish_images": ("false", "publish /camera/image_raw"),
    "publish_cameras": ("false", "publish /camera/image_raw and /wrist_camera/image_raw (RGB policies)"),
    "image_size": ("128", "camera image size in pixels"),
    "camera": ("front", "scene camera"),
    "command_timeout": ("0.2", "seconds without ee commands before the watchdog holds the arm"),
    "checkpoint": ("", "diffusion policy checkpoint ('' = no learned policy)"),
    "device": ("auto", "auto | cpu | cuda"),
    "planner": ("tree", "tree | clea | iterative | openloop"),
    "llm": ("llama:smollm2-135m", "llama:MODEL | openai:MODEL | replay:FILE | offline (symbolic oracle, not an LLM)"),
    "executor": ("scripted", "scripted (sim skills) | policy (the policy node)"),
}


def _arg(name, value_type=str):
    return ParameterValue(LaunchConfiguration(name), value_type=value_type)


def generate_launch_description():
    """The sim, policy and planner nodes with their launch arguments."""
    package = _package()
    sim = Node(
        package=package, executable="taskweave-sim-node", name="taskweave_sim", output="screen",
        parameters=[{
            "task": _arg("task"), "backend": _arg("backend"), "seed": _arg("seed", int),
            "control_rate": _arg("control_rate", float), "time_scale": _arg("time_scale", float),
            "publish_images": _arg("publish_images", bool), "image_size": _arg("image_size", int),
            "publish_cameras": _arg("publish_cameras", bool),
            "camera": _arg("camera"), "command_timeout": _arg("command_timeout", float),
        }],
    )
    policy = Node(
        package=package, executable="taskweave-policy-node", name="taskweave_policy", output="screen",
        parameters=[{
            "checkpoint": _arg("checkpoint"), "device": _arg("device"),
            "control_rate": ParameterValue(PythonExpression(
                [LaunchConfiguration("control_rate"), " * ", LaunchConfiguration("time_scale")]), value_type=float),
        }],
    )
    planner = Node(
        package=package, executable="taskweave-planner-node", name="taskweave_planner", output="screen",
        parameters=[{"planner": _arg("planner"), "llm": _arg("llm"), "executor": _arg("executor")}],
    )
    declared = [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
    return LaunchDescription(declared + [sim, policy, planner])
