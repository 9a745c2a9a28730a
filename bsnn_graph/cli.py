"""The ``bsnn`` command line: one thin click command per verb.

Commands live in ``cli_info`` (info), ``cli_convert`` (passes, convert) and
``cli_run`` (run, eval, inspect); each module lists its commands in
``COMMANDS``. A command parses, calls the library (``run`` and ``eval``:
``runtime.evaluate.evaluate_snn``; ``--workers`` through ``cli_cluster``)
and prints. Errors a user can cause (:class:`~bsnn_graph.errors.BsnnError`)
print one line and exit with status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .errors import BsnnError

__all__ = ["main"]

_COMMAND_MODULES = ("bsnn_graph.cli_info", "bsnn_graph.cli_convert", "bsnn_graph.cli_run")


def _one_line(text: str) -> str:
    """The message on one line: control characters (from a damaged file's names, say) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BsnnError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            sys.exit(1)
        except MemoryError:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            # e.g. a file whose header claims a huge shape, or data too large for this machine
            click.echo(f"error: bsnn {ctx.invoked_subcommand}: out of memory", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="bsnn-graph")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """bsnn: convert ONNX CNNs into bistable spiking networks (BSNN) and run them on CPU."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _module in _COMMAND_MODULES:
    for _command in importlib.import_module(_module).COMMANDS:
        main.add_command(_command)
