"""taskweave: LLM task planning over a multitask diffusion policy in MuJoCo and PyBullet."""
__version__ = "0.1.0"
