"""Click options shared by several ``bsnn`` commands (one definition, one help text)."""

from __future__ import annotations

import click

__all__ = [
    "calibrate_option",
    "calibration_label",
    "channelwise_option",
    "full_dynamics_option",
    "initial_potential_option",
    "input_lambda_option",
    "input_scale_option",
    "json_option",
    "threads_option",
]

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

def calibrate_option():
    """``--calibrate``: how the lambdas are chosen (conversion of an ANN; None: passes.default_calibration)."""
    return click.option(
        "--calibrate",
        type=click.Choice(["percentile", "search"]),
        default=None,
        help="Lambda per population: the --percentile of the activations, or the search for the lambda that "
        "minimises the K-bit network's error layer by layer (1 + levels passes over the calibration data); "
        "default search for bsnn, bsnn-nosn and phase, percentile for if-rate.",
    )


def calibration_label(calibrate: str, passes: int, mode: str | None = None) -> str:
    """The progress bar label of a calibration that reads the data ``passes`` times."""
    where = f" {mode}" if mode else ""
    if calibrate == "search":
        return f"calibrating{where} (search: {passes} passes over the data)"
    return f"calibrating{where} (percentile)"


def initial_potential_option(default: str | None = "half"):
    """``--initial-potential``: where every spiking population's V starts (conversion of an ANN)."""
    return click.option(
        "--initial-potential",
        type=click.Choice(["half", "zero"]),
        default=default,
        show_default=default is not None,
        help="V at the start: half the smallest spike value (rounds to K bits; if-rate: theta/2) or zero "
        "(truncates)" + ("." if default is not None else "; default half."),
    )


#: ``--full-dynamics``: simulate every period instead of the light cone of the output
full_dynamics_option = click.option(
    "--full-dynamics",
    is_flag=True,
    help="Simulate every period (default: only the spikes that can still reach the output by T, the light cone).",
)

#: ``--threads``: Numba worker threads of the runtime
threads_option = click.option("--threads", type=click.IntRange(min=1), help="Worker threads (default: all cores).")


def json_option(instead_of: str = "the table"):
    """``--json`` (stored as ``as_json``): print one JSON document instead of ``instead_of``."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print one JSON document instead of {instead_of}.")
