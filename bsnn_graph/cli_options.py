"""Click options shared by several ``bsnn`` commands (one definition, one help text)."""

from __future__ import annotations

import click

__all__ = ["channelwise_option", "input_lambda_option", "input_scale_option", "json_option", "threads_option"]

#: ``--input-scale``: multiplies the raw data (see bsnn_graph.data.load_dataset)
input_scale_option = click.option(
    "--input-scale", type=float, help="Multiply the raw inputs by this (default 1/255 for uint8 data)."
)

#: ``--channelwise``: normalisation with one lambda per channel (conversion of an ANN)
channelwise_option = click.option("--channelwise", is_flag=True, help="One lambda per channel instead of per population.")

#: ``--input-lambda``: lambda of the analog input (conversion of an ANN)
input_lambda_option = click.option(
    "--input-lambda", type=click.FloatRange(0, min_open=True), help="Lambda of the analog input (1)."
)

#: ``--threads``: Numba worker threads of the runtime
threads_option = click.option("--threads", type=click.IntRange(min=1), help="Worker threads (default: all cores).")


def json_option(instead_of: str = "the table"):
    """``--json`` (stored as ``as_json``): print one JSON document instead of ``instead_of``."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print one JSON document instead of {instead_of}.")
