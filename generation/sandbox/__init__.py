"""Containment of generated task code: the static policy, the launcher, the child and its guard.

`static` parses a module and rejects it unless it keeps to an allow-list (in this process, never
executing it); `launcher.run_sandboxed` runs a job on it in a contained child process
(`python -I -B -m taskweave.generation.sandbox.child`, rlimits, own network namespace, no root);
`child` loads the module there under `guard`'s audit hook and restricted builtins and answers
with plain JSON data. Kept free of imports so that the child starts light.
"""
