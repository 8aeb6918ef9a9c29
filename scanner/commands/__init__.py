"""CLI verbs of the scanner library, one module each with `add_arguments(parser)` and `run(args) -> int`."""
