"""A real robot: policy + planner against a robot driver (`ros2 launch launch/robot.launch.py checkpoint:=RUN`).

The checkpoint decides what the policy node reads. A robot-input (RGB) checkpoint needs no
ground-truth bridge: it reads the driver's standard topics, the front camera (`image_topic`,
sensor_msgs/Image rgb8 or bgr8), the wrist camera (`wrist_image_topic`, when the checkpoint has a
'wrist' camera) and `joint_states_topic` (sensor_msgs/JointState with the Panda's 7 arm joints and
2 finger joints by name; the TCP pose comes from them by forward kinematics). A privileged (state)
checkpoint needs the state JSON of `/taskweave/symbolic_state` (robot features, commanded TCP target,
objects; see `taskweave.ros.state_json`) from a perception / driver bridge. The planner reads that
symbolic state in either case (it plans over objects). TCP targets (PoseStamped, gripper pointing
down) and the finger width (Float64) go to the driver's command topics. Remap every topic with the
launch arguments. Without ROS 2 installed, `taskweave bringup robot --remap FROM:=TO` runs the same graph.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
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
    "checkpoint": ("", "diffusion policy checkpoint (file or run folder)"),
    "device": ("auto", "auto | cpu | cuda"),
    "control_rate": ("10.0", "commands per second"),
    "policy_task": ("", "task conditioning of the policy ('' = from the state JSON)"),
    "planner": ("tree", "tree | clea | iterative | openloop"),
    "llm": ("llama:smollm2-135m", "llama:MODEL (embedded, no network) | openai:MODEL | replay:FILE "
                                  "(offline needs a simulated task)"),
    "skill_timeout": ("60.0", "seconds a skill may take"),
    "state_topic": ("/taskweave/symbolic_state", "the bridge's state JSON (std_msgs/String)"),
    "ee_command_topic": ("/taskweave/ee_command", "the driver's TCP target input (geometry_msgs/PoseStamped)"),
    "gripper_command_topic": ("/taskweave/gripper_command", "the driver's finger width input (std_msgs/Float64)"),
    "image_topic": ("/camera/image_raw", "RGB policies: the front camera (sensor_msgs/Image rgb8 | bgr8)"),
    "wrist_image_topic": ("/wrist_camera/image_raw", "RGB policies: the wrist camera (sensor_msgs/Image)"),
    "joint_states_topic": ("/joint_states", "RGB policies: the arm and finger joints (sensor_msgs/JointState)"),
}


def _arg(name, value_type=str):
    return ParameterValue(LaunchConfiguration(name), value_type=value_type)


def generate_launch_description():
    """The policy and planner nodes, remapped onto the robot driver's topics."""
    package = _package()
    state = ("/taskweave/symbolic_state", LaunchConfiguration("state_topic"))
    policy = Node(
        package=package, executable="taskweave-policy-node", name="taskweave_policy", output="screen",
        parameters=[{
            "checkpoint": _arg("checkpoint"), "device": _arg("device"),
            "control_rate": _arg("control_rate", float), "task": _arg("policy_task"),
        }],
        remappings=[state,
                    ("/taskweave/ee_command", LaunchConfiguration("ee_command_topic")),
                    ("/taskweave/gripper_command", LaunchConfiguration("gripper_command_topic")),
                    ("/camera/image_raw", LaunchConfiguration("image_topic")),
                    ("/wrist_camera/image_raw", LaunchConfiguration("wrist_image_topic")),
                    ("/joint_states", LaunchConfiguration("joint_states_topic"))],
    )
    planner = Node(
        package=package, executable="taskweave-planner-node", name="taskweave_planner", output="screen",
        parameters=[{
            "planner": _arg("planner"), "llm": _arg("llm"), "executor": "policy",
            "skill_timeout": _arg("skill_timeout", float),
        }],
        remappings=[state],
    )
    declared = [DeclareLaunchArgument(n, default_value=d, description=h) for n, (d, h) in ARGUMENTS.items()]
    return LaunchDescription(declared + [policy, planner])
