"""One module per `taskweave` command: `HELP`, `add_arguments(parser)` and `run(args) -> int` over library code."""
