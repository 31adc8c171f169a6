"""The built-in task library."""
from taskweave.envs.tasks.arranging import AlignInLine, PushToZone, RotateBlock, SwapBlocks
from taskweave.envs.tasks.placing import AllColorBlocksInBowl, BlockInBowl, PackTray, PlaceInZone, SortByColour
from taskweave.envs.tasks.stacking import StackOnBlock, StackPyramid, StackTower, TowerOfHanoi, Unstack

BUILTIN_TASKS = (BlockInBowl, PlaceInZone, AllColorBlocksInBowl, PackTray, SortByColour, StackOnBlock,
                 StackTower, StackPyramid, Unstack, TowerOfHanoi, AlignInLine, SwapBlocks, PushToZone, RotateBlock)

__all__ = [t.__name__ for t in BUILTIN_TASKS] + ["BUILTIN_TASKS"]
