"""`taskweave bringup`: re-exports `taskweave.ros.bringup` under the module name the CLI table uses."""
from taskweave.ros.bringup import add_bringup_arguments, bringup_main

__all__ = ["add_bringup_arguments", "bringup_main"]
