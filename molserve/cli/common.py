"""What every verb shares: how groups are built, the Settings in the Typer context, progress bars
on stderr, comma-or-repeat option lists, and the one error boundary of the command line.

The boundary (`guarded`, used by `MolserveGroup.main`) is the only place where an error becomes
output: one line `molserve: error: <message>` on stderr and a non-zero exit code, never a
traceback for an error molserve raised on purpose or a usage mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

try:  # Typer 0.2x carries its own copy of Click; older releases use Click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # type: ignore

from molserve.errors import InvalidInput, MolserveError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from molserve.config import Settings

USAGE = 2  # bad usage and refused input (the conventional usage-error code)
ABORTED = 130
# Errors that lower layers still raise with a message a user can act on. The project's own
# errors (MolserveError) are the rule; OSError covers unreadable or unwritable files.
EXPECTED = (MolserveError, ValueError, KeyError, RuntimeError, OSError)
# Which extra provides a module a command may need but the base install lacks.
EXTRAS = {"lightgbm": "train", "torch": "worker", "transformers": "worker", "onnxruntime": "worker",
          "onnx": "worker", "tokenizers": "worker", "modal": "deploy", "ray": "deploy"}


def group(**options: Any) -> typer.Typer:
    """A Typer app with plain (not Rich) help and errors, and no completion commands."""
    defaults: dict[str, Any] = {"rich_markup_mode": None, "pretty_exceptions_enable": False,
                                "add_completion": False, "no_args_is_help": True}
    return typer.Typer(**{**defaults, **options})


def settings(ctx: typer.Context) -> Settings:
    """The Settings the root callback built from the environment and --registry/--datasets."""
    return ctx.obj


def items(values: Iterable[str] | None) -> list[str]:
    """An option given repeatedly and/or comma-separated (`--only a,b --only c`), in order."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def build(model: type[BaseModel], options: dict[str, str], **values: Any) -> Any:
    """`model(**values)`, with a validation failure told as the options the user typed.
    `options` maps a field to its option where the names differ."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{options.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: {e['msg']}"
            for e in error.errors())
        raise InvalidInput(problems) from None


class ProgressBar:
    """A percentage bar on stderr that appears at its first update, so a command that fails
    before any work started prints its error line alone."""

    def __init__(self, desc: str = "") -> None:
        self.desc = desc
        self.bar: Any = None

    def update(self, step: str, fraction: float) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=self.desc, unit="%", leave=True, file=sys.stderr,
                            bar_format="{desc:<28} {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = int(round(fraction * 100))
        self.bar.set_postfix_str(step)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(desc: str = "") -> tuple[ProgressBar, Callable[[str, float], None]]:
    """A bar on stderr and its `update(step, fraction)`."""
    bar = ProgressBar(desc)
    return bar, bar.update


def transformer_progress(desc: str) -> tuple[ProgressBar, Callable[[str, float, dict], None]]:
    """A bar for training that also reports float metrics (loss, validation score)."""
    bar, update = progress_bar(desc=desc)

    def report(step: str, fraction: float, info: dict) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in info.items() if isinstance(v, float))
        update(f"{step} {shown}", fraction)

    return bar, report


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)


def fail(message: str) -> None:
    print(f"molserve: error: {one_line(message) or 'failed'}", file=sys.stderr)


def message_of(error: BaseException) -> str:
    if isinstance(error, MolserveError):
        return error.message
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.split(".")[0]
        extra = EXTRAS.get(top)
        hint = f": pip install 'molserve[{extra}]'" if extra else ""
        return f"this command needs {top}, which is not installed{hint}"
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # str(KeyError) would quote the message
    return str(error) or type(error).__name__


def usage_message(error: UsageError) -> str:
    # Typer checks choices with pydantic, whose message starts "Value error, ".
    message = error.format_message().replace("Value error, ", "")
    if error.ctx is not None:
        message = f"{message.rstrip()} (see '{error.ctx.command_path} --help')"
    return message


def guarded(invoke: Callable[[], Any]) -> int:
    """Run a command line; whatever happens, at most one error line and an exit code."""
    try:
        result = invoke()
    except typer.Exit as done:
        return done.exit_code
    except NoArgsIsHelpError as error:
        error.show()  # a group named without its verb: its help, as the user asked nothing else
        return USAGE
    except UsageError as error:
        fail(usage_message(error))
        return error.exit_code
    except ClickException as error:
        fail(error.format_message())
        return error.exit_code or 1
    except typer.Abort:
        fail("aborted")
        return ABORTED
    except KeyboardInterrupt:
        fail("interrupted")
        return ABORTED
    except (ModuleNotFoundError, *EXPECTED) as error:
        fail(message_of(error))
        return USAGE
    # Anything else is a bug: its traceback is what a report needs, so it is not caught.
    if result is None:
        return 0
    return result if isinstance(result, int) else 0


class MolserveGroup(TyperGroup):
    """The root command: Click parses and dispatches inside the error boundary, both for
    `main()` (the console script) and for Typer's test runner, which calls this `main`."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        code = guarded(lambda: super(MolserveGroup, self).main(
            args=args, prog_name=prog_name or "molserve", complete_var=complete_var,
            standalone_mode=False, **extra))
        if standalone_mode:
            sys.exit(code)
        return code
