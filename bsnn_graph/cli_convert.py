"""bsnn CLI commands (see bsnn_graph.cli)."""

COMMANDS = []
