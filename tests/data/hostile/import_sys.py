"""Imports sys at module level and reaches os through sys.modules."""
import sys

sys.modules["os"].system("touch @TARGET@/import_sys")
