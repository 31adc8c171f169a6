"""Imports os at module level and runs a command at import time."""
import os

os.system("touch @TARGET@/import_os")
