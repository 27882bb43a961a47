"""The root command group, the options every command shares, and error handling."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import attrs
import click
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from usageledger import __version__, db, migrations
from usageledger.errors import UsageLedgerError

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("usageledger")


def stdout() -> Console:
    # No emoji codes: a name like `web:cat:` from the database is printed as it is (§9).
    return Console(highlight=False, soft_wrap=True, emoji=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def literal(value: object) -> Text:
    """A data value (a name, guid or path) for a rich Table cell or print: never markup."""
    return Text("" if value is None else str(value))


def db_option(f: F) -> F:
    """`--db URL`: the platform database (env USAGELEDGER_DB, default a SQLite file here)."""
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        envvar=db.ENV_DB,
        default=None,
        show_envvar=True,
        help=f"Database URL (default: {db.DEFAULT_DB_URL}).",
    )(f)


def json_option(f: F) -> F:
    """`--json`: one JSON document on stdout; progress and logs go to stderr only."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def open_engine(db_url: str | None, *, create: bool = False, need_schema: bool = True) -> Engine:
    """An Engine for the command's `--db`, checked to answer and (usually) to hold the schema."""
    engine = db.make_engine(db_url, create=create)
    db.check_connection(engine)
    if need_schema:
        migrations.require_schema(engine)
    return engine


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=False)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def emit_json(document: Any) -> None:
    """Write one JSON document (snake_case keys, ISO-8601 UTC timestamps) to stdout."""
    click.echo(json.dumps(document, default=_json_default, sort_keys=False, indent=2))


def show_progress(as_json: bool) -> bool:
    """Progress bars only for a person watching: not under --json, not when stderr is a pipe."""
    return not as_json and sys.stderr.isatty()


class _Group(click.Group):
    """Lists commands in the order they were added (the order a newcomer needs them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="usageledger")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Keep, backfill and consume usage events so billing never loses a running resource."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=stderr(), show_path=False, show_time=False)],
        force=True,
    )


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _command_path(group: click.Group, argv: Sequence[str]) -> str:
    """The command words of argv (`usageledger cleanup`), for errors click raises without one."""
    words = ["usageledger"]
    command: click.Command = group
    for arg in argv:
        if not isinstance(command, click.Group):
            break
        if arg.startswith("-"):
            continue  # a group option such as -v (the groups' options take no value)
        sub = command.commands.get(arg)
        if sub is None:
            break
        words.append(arg)
        command = sub
    return " ".join(words)


def _usage_error_line(exc: click.ClickException, group: click.Group, argv: Sequence[str]) -> str:
    """Click's message as one `error: …` line naming the remedy, without click's usage block."""
    message = _one_line(db.mask_url_text(exc.format_message())).rstrip(".")
    if not isinstance(exc, click.UsageError):
        return f"error: {message}"
    path = exc.ctx.command_path if exc.ctx is not None else _command_path(group, argv)
    if message.endswith("?"):  # "No such option '--bach-size'. Did you mean '--batch-size'?"
        return f"error: {message} See `{path} --help`"
    return f"error: {message}; see `{path} --help`"


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", None)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a supervisor stopping a service, `kill`) stops a command as Ctrl-C does: the
    batch in flight rolls back, the finished ones stay, `consume --follow` prints its summary.
    Only the main thread may set signal handlers; elsewhere SIGTERM keeps its default, and so
    does a process told to ignore it."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        # None: a handler set outside Python, which Python cannot reinstall.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run(group: click.Group, argv: Sequence[str]) -> int:
    """Run the command line; every failure becomes one `error: …` line and an exit code."""
    err = stderr()
    try:
        with _sigterm_as_interrupt():
            result = group.main(list(argv), prog_name="usageledger", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        if _NO_ARGS_IS_HELP is not None and isinstance(exc, _NO_ARGS_IS_HELP):
            # A group named without a command (`usageledger db`): its help, as click shows it.
            err.print(exc.format_message(), markup=False)
            return 2
        err.print(_usage_error_line(exc, group, argv), markup=False)
        return 2
    except click.Abort:
        err.print("error: interrupted", markup=False)
        return 130
    except KeyboardInterrupt:
        err.print(
            "error: interrupted; the work done so far is committed, rerun to finish", markup=False
        )
        return 130
    except UsageLedgerError as exc:
        err.print(f"error: {db.mask_url_text(str(exc))}", markup=False)
        return exc.exit_code
    except SQLAlchemyError as exc:
        err.print(f"error: database error: {db.one_line(exc)}", markup=False)
        return 1
    except Exception as exc:  # a defect: still one line, the traceback only with -vv
        log.debug("unexpected error", exc_info=True)
        err.print(
            f"error: unexpected {type(exc).__name__}: {db.one_line(exc)}; rerun with -vv for "
            "the traceback and report it",
            markup=False,
        )
        return 1
    return int(result) if isinstance(result, int) else 0


def register() -> None:
    """Attach every command group (imported here so that `cli` stays importable alone)."""
    from usageledger.cli import (
        backfill_commands,
        cleanup_commands,
        consume_commands,
        db_commands,
        reconstruct_commands,
        simulate_commands,
    )

    cli.add_command(db_commands.db_group)
    cli.add_command(cleanup_commands.cleanup_command)
    cli.add_command(backfill_commands.backfill_command)
    cli.add_command(consume_commands.consume_command)
    cli.add_command(reconstruct_commands.reconstruct_group)
    cli.add_command(simulate_commands.simulate_command)


register()
