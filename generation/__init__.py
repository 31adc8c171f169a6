"""GenSim-style task generation: LLM-written tasks, validated in a sandbox, kept in a library.

The pipeline (`pipeline`) runs propose -> reference -> implement -> validate (with repairs) ->
dedupe -> reflect, each stage its own LLM call (prompts in `prompts`; `offline` is a non-LLM
composer for runs without a network). `validate` checks a module in stages (parse, static
policy, sandboxed build, sandboxed oracle on both engines); `sandbox` holds the static policy
and the contained child process that alone runs generated code. Accepted tasks go into the
`library` (`register_library` makes them `Gen_<Name>` envs, loaded as `task.SandboxedTask`);
`stats` counts how far candidates got.

Layers: generation imports `taskweave.sim`, `taskweave.envs` and the LLM clients of
`taskweave.planning.llm`; nothing below it imports generation.
"""
