"""Click options shared by several ``bsnn`` commands (one definition, one help text)."""

from __future__ import annotations

import click

__all__ = ["input_scale_option", "json_option", "threads_option"]

#: ``--input-scale``: multiplies the raw data (see bsnn_graph.data.load_dataset)
input_scale_option = click.option(
    "--input-scale", type=float, help="Multiply the raw inputs by this (default 1/255 for uint8 data)."
)

#: ``--threads``: Numba worker threads of the runtime
threads_option = click.option("--threads", type=click.IntRange(min=1), help="Worker threads (default: all cores).")


def json_option(instead_of: str = "the table"):
    """``--json`` (stored as ``as_json``): print one JSON document instead of ``instead_of``."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print one JSON document instead of {instead_of}.")
