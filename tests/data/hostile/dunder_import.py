"""Uses __import__ and __builtins__ directly."""
__import__("os").system("touch @TARGET@/dunder_import")
__builtins__["__import__"]("os").system("touch @TARGET@/builtins_import")
