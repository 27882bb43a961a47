"""`usageledger simulate`: race the platform, retention, backfill and consumers against a real
database and check that billing is never lost or duplicated (SPEC §8)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from usageledger import db
from usageledger.cli.root import (
    db_option,
    emit_json,
    json_option,
    literal,
    show_progress,
    stderr,
    stdout,
)
from usageledger.errors import BadInputError
from usageledger.simulator.checker import INVARIANTS, Severity, Verdict, Words
from usageledger.simulator.report import never_exercised, report_document, write_outputs
from usageledger.simulator.run import RunResult, run_scenario, scratch_database
from usageledger.simulator.scenario import (
    STRATEGIES,
    ActorMix,
    FaultSwitches,
    Scenario,
    Sizes,
    generate_scenario,
    load_scenario,
)
from usageledger.simulator.shrink import (
    REGRESSION_FOLDER,
    ShrinkError,
    Signature,
    regression_document,
    write_regression,
)
from usageledger.simulator.shrink import shrink as shrink_scenario

VERDICT_STYLE = {"valid": "green", "invalid": "bold red", "unknown": "yellow"}


def _non_negative(_ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}", param=param)
    return value


def _size_option(
    name: str, help_text: str
) -> Callable[[Callable[..., object]], Callable[..., object]]:
    return click.option(
        f"--{name}", type=int, default=None, metavar="N", callback=_non_negative, help=help_text
    )


@contextmanager
def _quiet_actors() -> Iterator[None]:
    """The actors' own warnings (a consumer behind retention, a task stop without evidence) are
    what the simulation provokes on purpose; show them only with -v."""
    package = logging.getLogger("usageledger")
    before = package.level
    if package.getEffectiveLevel() >= logging.WARNING:
        package.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package.setLevel(before)


@contextmanager
def _progress(enabled: bool, scenario: Scenario) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("simulating seed {task.fields[seed]}: step {task.completed}"),
        TimeElapsedColumn(),
        console=stderr(),
        transient=True,
    )
    task = progress.add_task("simulate", total=None, seed=scenario.seed)

    def on_step(step: int) -> None:
        progress.update(task, completed=step)

    with progress:
        yield on_step


def _render(result: RunResult, files: dict[str, Path]) -> None:
    out = stdout()
    report = result.report
    verdict = report.verdict.value
    out.print(
        f"[bold]usageledger simulate[/bold] seed {result.scenario.seed} on {result.backend}: "
        f"[{VERDICT_STYLE[verdict]}]{verdict.upper()}[/]  "
        f"({result.stats.steps} steps, {result.elapsed_seconds:.1f}s)"
    )
    counts = Table(title="what happened", title_justify="left")
    counts.add_column("measure")
    counts.add_column("count", justify="right")
    for key, value in result.counts.items():
        counts.add_row(escape(key.replace("_", " ")), str(value))
    out.print(counts)
    invariants = Table(title="invariants", title_justify="left")
    for column in ("", "rule", "verdict", "invalid", "deviations", "expected"):
        invariants.add_column(column)
    for r in report.invariants:
        invariants.add_row(
            r.invariant,
            INVARIANTS[r.invariant],
            f"[{VERDICT_STYLE[r.verdict.value]}]{r.verdict.value}[/]",
            str(r.invalid),
            str(r.deviations),
            str(r.expected),
        )
    out.print(invariants)
    totals = report.deviation_totals()
    if totals:
        deviations = Table(title="known bounded deviations", title_justify="left")
        deviations.add_column("deviation")
        deviations.add_column("count", justify="right")
        deviations.add_column("total size", justify="right")
        for name, (count, seconds) in sorted(totals.items()):
            deviations.add_row(literal(name), str(count), Words.span(seconds))
        out.print(deviations)
    coverage = Table(title="coverage (S9)", title_justify="left")
    coverage.add_column("race or fault")
    coverage.add_column("times", justify="right")
    for key, value in result.coverage.items():
        coverage.add_row(key.replace("_", " "), str(value) if value else "[yellow]never[/]")
    out.print(coverage)
    missing = never_exercised(result)
    if missing:
        out.print(
            "[yellow]this run never exercised:[/] "
            + ", ".join(m.replace("_", " ") for m in missing)
        )
    shown = [f for f in report.findings if f.severity is Severity.INVALID][:10]
    for f in shown:
        out.print(f"[red]{f.invariant}[/] {escape(f.witness)}", markup=True, highlight=False)
    hidden = len(report.invalid_findings()) - len(shown)
    # The paths are under the user's --out (which may hold `[`): printed literally.
    if hidden > 0:
        out.print(f"… and {hidden} more invalid findings in {files['report']}", markup=False)
    out.print(f"picture: {files['picture']}", markup=False)
    out.print(f"scenario (replay with --scenario): {files['scenario']}", markup=False)
    if "regression" in files:
        out.print(
            f"shrunk regression: {files['regression']} (copy it into {REGRESSION_FOLDER} for "
            "the regression suite)",
            markup=False,
        )


def _shrink(result: RunResult, server: str, out_dir: Path) -> Path:
    """S7: delta-debug the failing scenario, its recorded schedule kept, on fresh scratch
    databases of the same server. The regression lists the backend it was found on."""

    def check(candidate: Scenario) -> Signature:
        with (
            scratch_database(server) as url,
            tempfile.TemporaryDirectory(prefix="usageledger-shrink-") as work,
        ):
            return Signature.of(run_scenario(candidate, url, workdir=Path(work)).report)

    shrunk = shrink_scenario(result.scenario, check)
    document = regression_document(
        shrunk, backend=result.backend, why=f"shrunk from seed {result.scenario.seed}"
    )
    return write_regression(document, out_dir / "regression.json")


@click.command("simulate")
@click.option("--seed", type=int, default=None, metavar="N", help="Seed of the run (default 1).")
@click.option(
    "--scenario",
    "scenario_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Run this scenario file; with a recorded schedule it replays step for step.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write scenario, history, report and picture here (default ./simulation-SEED).",
)
@click.option(
    "--backend-url",
    default=None,
    metavar="URL",
    help="A PostgreSQL or MariaDB server (or SQLite file) to race against; the run uses a "
    "scratch database beside it and drops it afterwards. Default: SQLite in --out.",
)
@_size_option("apps", "Apps (default 8).")
@_size_option("processes", "Processes (default 14).")
@_size_option("tasks", "Tasks (default 16).")
@_size_option("service-instances", "Service instances (default 6).")
@_size_option("builds", "Builds, each one staging (default 4).")
@click.option("--span-days", type=int, default=None, metavar="N", help="Simulated days (100).")
@click.option(
    "--strategy", type=click.Choice(STRATEGIES), default=None, help="Scheduling strategy."
)
@click.option("--no-faults", is_flag=True, help="Turn every fault off (S4).")
@click.option(
    "--purge-and-reseed",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Add N destructive purge-and-reseed runs by an operator, each followed by a backfill "
    "(S2, B9; default 0).",
)
@click.option("--keep-database", is_flag=True, help="Do not drop the scratch database.")
@click.option(
    "--shrink",
    is_flag=True,
    help="When the run is invalid, shrink it to a minimal failing scenario and write "
    "regression.json into --out (S7).",
)
@db_option
@json_option
def simulate_command(
    seed: int | None,
    scenario_file: Path | None,
    out: Path | None,
    backend_url: str | None,
    apps: int | None,
    processes: int | None,
    tasks: int | None,
    service_instances: int | None,
    builds: int | None,
    span_days: int | None,
    strategy: str | None,
    no_faults: bool,
    purge_and_reseed: int | None,
    keep_database: bool,
    shrink: bool,
    db_url: str | None,
    as_json: bool,
) -> int:
    """Run a simulation and check every invariant (I1–I10). Exit 0 when valid, 1 otherwise.

    `--db` works like `--backend-url`: the named database is never touched, a scratch database
    is created beside it.
    """
    generated = (
        apps,
        processes,
        tasks,
        service_instances,
        builds,
        span_days,
        strategy,
        seed,
        purge_and_reseed,
    )
    if scenario_file is not None:
        if any(v is not None for v in generated) or no_faults:
            raise click.BadParameter(
                "--scenario replays a file; do not combine it with --seed, sizes, --span-days, "
                "--strategy, --purge-and-reseed or --no-faults",
                param_hint="--scenario",
            )
        scenario = load_scenario(scenario_file)
    else:
        defaults = Sizes()
        try:
            sizes = Sizes(
                apps=defaults.apps if apps is None else apps,
                processes=defaults.processes if processes is None else processes,
                tasks=defaults.tasks if tasks is None else tasks,
                service_instances=(
                    defaults.service_instances if service_instances is None else service_instances
                ),
                builds=defaults.builds if builds is None else builds,
            )
        except BadInputError as exc:
            raise click.BadParameter(str(exc)) from None
        if span_days is not None and span_days < 1:
            raise click.BadParameter("must be >= 1", param_hint="--span-days")
        faults = (
            FaultSwitches(
                kill_connection=False,
                crash_between_passes=False,
                crash_mid_backfill=False,
                consumer_restart=False,
            )
            if no_faults
            else FaultSwitches()
        )
        scenario = generate_scenario(
            1 if seed is None else seed,
            sizes=sizes,
            span_days=100 if span_days is None else span_days,
            mix=ActorMix(purge_and_reseed=purge_and_reseed or 0),
            faults=faults,
            strategy=strategy or "random",
        )
    out_dir = out if out is not None else Path(f"simulation-{scenario.seed}")
    server = backend_url or db_url or f"sqlite:///{out_dir / 'simulation.db'}"
    db.parse_url(server)  # a bad URL is bad input before anything is written
    if backend_url is None and db_url is None:
        out_dir.mkdir(parents=True, exist_ok=True)  # the default scratch file lives in it
    with (
        scratch_database(server, keep=keep_database) as url,
        tempfile.TemporaryDirectory(prefix="usageledger-sim-") as work,
        _progress(show_progress(as_json), scenario) as on_step,
        _quiet_actors(),
    ):
        out_dir.mkdir(parents=True, exist_ok=True)  # only once the database is there
        result = run_scenario(scenario, url, workdir=Path(work), progress=on_step)
    files = write_outputs(result, out_dir)
    shrink_error = ""
    if shrink and result.report.verdict is Verdict.INVALID:
        try:
            with _quiet_actors():
                files["regression"] = _shrink(result, server, out_dir)
        except ShrinkError as exc:
            shrink_error = str(exc)
    if as_json:
        emit_json(report_document(result, files))
    else:
        _render(result, files)
    if shrink_error:
        stderr().print(f"error: {shrink_error}", markup=False)
    return 0 if result.report.verdict is Verdict.VALID else 1
