"""§9: a bad option value is one `error: …` line naming the remedy; data from the database (names,
guids, the user's consumer name and URL) is printed literally, never read as rich markup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.reconstruct.histories import app_row, insert_app, insert_service, service_row
from usageledger import db, migrations
from usageledger.cli import cli
from usageledger.cli.root import run


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(cli, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so that table cells are not wrapped and a value can be found whole."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'platform.db'}"


@pytest.fixture
def platform(sqlite_url: str) -> Iterator[Engine]:
    """A SQLite platform database at head (these tests are about printing, not about backends)."""
    engine = db.make_engine(sqlite_url, create=True)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()


# --- bad option values ------------------------------------------------------------------------

BAD_OPTION_VALUES = [
    (["cleanup", "--batch-size", "0"], "--batch-size", "usageledger cleanup"),
    (["cleanup", "--cutoff-age-in-days", "-1"], "--cutoff-age-in-days", "usageledger cleanup"),
    (["cleanup", "--table", "foo"], "--table", "usageledger cleanup"),
    (["cleanup", "--batch-size"], "--batch-size", "usageledger cleanup"),  # value missing
    (["backfill", "--batch-size", "0"], "--batch-size", "usageledger backfill"),
    (["backfill", "--batch-size", "x"], "--batch-size", "usageledger backfill"),
    (["consume", "--batch-size", "0"], "--batch-size", "usageledger consume"),
    (["consume", "--grace-seconds", "-1"], "--grace-seconds", "usageledger consume"),
    (["consume", "--grace-seconds", "nan"], "--grace-seconds", "usageledger consume"),
    (["consume", "--grace-seconds", "inf"], "--grace-seconds", "usageledger consume"),
    (["consume", "--batch-size", "1000000"], "--batch-size", "usageledger consume"),
    (
        ["cleanup", "--cutoff-age-in-days", "1000000"],
        "--cutoff-age-in-days",
        "usageledger cleanup",
    ),
    (["cleanup", "--batch-size", "40000"], "--batch-size", "usageledger cleanup"),
    (["consume", "--consumer", ""], "--consumer", "usageledger consume"),
    (
        ["reconstruct", "current-state", "--kind", "foo"],
        "--kind",
        "usageledger reconstruct current-state",
    ),
    (["simulate", "--apps", "-1"], "--apps", "usageledger simulate"),
    (["-v", "cleanup", "--no-such-option"], "--no-such-option", "usageledger cleanup"),
]


@pytest.mark.parametrize(
    ("args", "option", "command"),
    BAD_OPTION_VALUES,
    ids=[" ".join(case[0]) for case in BAD_OPTION_VALUES],
)
def test_bad_option_value_is_exactly_one_error_line(
    args: list[str],
    option: str,
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """§9: a bad option value exits 2 with exactly one line on stderr, `error: …`, naming the
    option and the remedy (`see usageledger COMMAND --help`); no usage block, nothing on stdout,
    nothing written (the SQLite file named by --db is not created)."""
    target = tmp_path / "never.db"
    code, out, err = _run(capsys, *args, "--db", f"sqlite:///{target}")
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert option in lines[0]
    assert f"see `{command} --help`" in lines[0].lower()
    assert not target.exists()


def test_unknown_command_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """§9: an unknown command is bad usage: one `error: …` line pointing at `usageledger --help`."""
    code, out, err = _run(capsys, "no-such-command")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "error: No such command 'no-such-command'; see `usageledger --help`"
    ]


def test_group_without_command_shows_its_help_once(capsys: pytest.CaptureFixture[str]) -> None:
    """§9: `usageledger db` alone prints the group's help on stderr once (no usage line repeated,
    no help text dressed as an `error:`), exit 2, nothing on stdout."""
    code, out, err = _run(capsys, "db")
    assert code == 2 and out == ""
    assert err.count("Usage: usageledger db") == 1
    assert "error:" not in err
    assert "upgrade" in err


# --- data printed literally -------------------------------------------------------------------

# `[/x]` is a closing tag without an opening one (rich raised MarkupError); `[red]`/`[b]…[/b]`
# were styles rich swallowed; `:cat:` was an emoji code rich replaced.
ODD_NAMES = ["web[/x]", "[red]api", "[b]bold[/b]", "web:cat:"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_cs4_current_state_prints_names_and_guids_literally(
    name: str, platform: Engine, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS4 / §9: the human table shows app, task and service names and guids exactly as stored,
    exit 0, whatever rich markup or emoji codes they contain."""
    insert_app(
        platform,
        app_row("STARTED", app_guid=f"p-{name}", name=name, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid=f"t-{name}", name=f"task-{name}", minute=1),
    )
    insert_service(platform, service_row("CREATED", instance=f"s-{name}", name=name))
    code, out, err = _run(capsys, "reconstruct", "current-state", "--db", sqlite_url)
    assert code == 0, err
    assert "Traceback" not in err
    for value in (f"p-{name}", f"t-{name}", f"s-{name}", name):
        assert value in out
    assert "totals: app 1, task 1, service 1" in out


def test_cs3_drift_table_prints_guids_literally(
    platform: Engine, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS3 / §9: `--verify` lists drift with the guid as stored (here an open run whose process
    the resource tables do not know), exit 1 for the drift, not a rich traceback."""
    insert_app(
        platform, app_row("STARTED", app_guid="gone[/x]", name="[red]api", previous_state="STOPPED")
    )
    code, out, err = _run(capsys, "reconstruct", "current-state", "--verify", "--db", sqlite_url)
    assert code == 1, err
    assert "Traceback" not in err
    assert out.count("gone[/x]") == 2  # the running table and the drift table


def test_c9_consume_summary_and_show_print_names_and_guids_literally(
    platform: Engine, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """C9 / §9: the consume summary prints the --consumer name as given, and `consume --show
    GUID` prints the guid, the name and the consumer literally, exit 0."""
    insert_app(
        platform, app_row("STARTED", app_guid="g[/x]", name="[red]api", previous_state="STOPPED")
    )
    consumer = "[red]billing[/x]"
    code, out, err = _run(
        capsys, "consume", "--db", sqlite_url, "--grace-seconds", "0", "--consumer", consumer
    )
    assert code == 0, err
    assert out.startswith(f"consumer '{consumer}': 1 events applied")

    code, out, err = _run(
        capsys, "consume", "--db", sqlite_url, "--consumer", consumer, "--show", "g[/x]"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"g[/x]: 1 segments billed by consumer '{consumer}'"
    assert lines[1].startswith("1. app [red]api ")

    code, out, err = _run(
        capsys, "consume", "--db", sqlite_url, "--consumer", consumer, "--show", "none[/x]"
    )
    assert code == 0, err
    assert out.strip() == f"consumer '{consumer}' has billed nothing for none[/x]"


def test_simulate_prints_the_out_paths_literally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9 (printed literally) / S1, S7: the human report of `simulate` names the picture and the
    replayable scenario under --out as given, even a directory named `run[/x]`, exit 0."""
    out_dir = tmp_path / "run[/x]"
    small = ["--apps", "2", "--processes", "3", "--tasks", "2", "--service-instances", "1"]
    code, out, err = _run(capsys, "simulate", "--seed", "4", *small, "--out", str(out_dir))
    assert code == 0, err
    assert f"picture: {out_dir / 'timeline.html'}" in out
    assert f"scenario (replay with --scenario): {out_dir / 'scenario.json'}" in out
