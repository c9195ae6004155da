"""The resnet-cifar command line, assembled from its commands (one module each); nothing else.

Each command parses its flags, calls the library and renders the result (cli/render.py,
cli/progress.py); what they share (errors and exit codes, signals, the environment's folders)
is in cli/common.py, the options several commands share and the setting flags of train and sweep
in cli/options.py.
"""

from __future__ import annotations

import sys

import typer
import typer.exceptions

from .calibrate import calibrate_command
from .data import data, download
from .export import export_command
from .helptext import LibraryHelpCommand
from .inference import eval_command, predict_command
from .info import info
from .render import Output
from .report import report as report_command
from .sweep import sweep
from .train import train

app = typer.Typer(
    name="resnet-cifar",
    help="Train and evaluate a hand-written ResNet-50 on CIFAR-10.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Each command fills in the library values its help texts name when its --help is shown.
for name, command in (
    ("train", train),
    ("eval", eval_command),
    ("predict", predict_command),
    ("export", export_command),
    ("report", report_command),
    ("calibrate", calibrate_command),
    ("sweep", sweep),
    ("data", data),
    ("download", download),
    ("info", info),
):
    app.command(name, cls=LibraryHelpCommand)(command)


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the contract's exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.exceptions.TyperException as exc:  # bad flag or argument: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        Output(json_mode=False).error(message)
        code = getattr(exc, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    code = code if isinstance(code, int) else 0
    sys.exit(code)
