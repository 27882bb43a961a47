"""Simulator benchmark (issue 6): simulated steps per second and scenarios per minute per
backend, the wall time of the default `usageledger simulate`, and the CI Hypothesis run.

    python bench/simulator_bench.py [--backend URL ...] [--scenarios N] [--hypothesis]

Backends default to SQLite (a file in a temporary folder) plus the local PostgreSQL server.
Each backend runs the default scenario (seed 1) and N small scenarios (as Hypothesis draws
them in CI) on scratch databases.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from usageledger import db
from usageledger.simulator.consumers import ledger_template
from usageledger.simulator.run import run_scenario, scratch_database, simulation_engine
from usageledger.simulator.scenario import ActorMix, Sizes, generate_scenario

DEFAULT_BACKENDS = ("postgresql+psycopg://postgres@127.0.0.1:5432/test",)
SMALL = Sizes(apps=2, processes=3, tasks=3, service_instances=1, builds=1, legacy=2)


def bench_backend(url: str, scenarios: int) -> None:
    with scratch_database(url) as scratch, tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        result = run_scenario(generate_scenario(1), scratch, workdir=Path(work))
        elapsed = time.perf_counter() - started
        print(
            f"{db.backend_of(db.parse_url(url)).value:<10} default scenario: "
            f"{result.stats.steps} steps in {elapsed:.1f}s = "
            f"{result.stats.steps / elapsed:.0f} steps/s, verdict {result.report.verdict.value}"
        )
        # As the CI property runs them: one engine (compiled statements, pool) and one migrated
        # empty ledger shared by every run.
        engine = simulation_engine(scratch)
        template = ledger_template(Path(work) / "template")
        started = time.perf_counter()
        steps = 0
        try:
            for seed in range(scenarios):
                scenario = generate_scenario(
                    100 + seed,
                    sizes=SMALL,
                    span_days=50,
                    mix=ActorMix(cleanup_runs=2),
                    polls=6,
                )
                steps += run_scenario(
                    scenario, scratch, workdir=Path(work), engine=engine, ledger_template=template
                ).stats.steps
        finally:
            engine.dispose()
        elapsed = time.perf_counter() - started
        print(
            f"{'':<10} {scenarios} small scenarios: {elapsed:.1f}s = "
            f"{60 * scenarios / elapsed:.0f} scenarios/min, {steps / elapsed:.0f} steps/s"
        )


def bench_cli() -> None:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "usageledger", "simulate", "--json"],
            cwd=folder,
            check=False,
            capture_output=True,
        )
        print(f"`usageledger simulate` (default, SQLite): {time.perf_counter() - started:.1f}s")


def bench_hypothesis() -> None:
    root = Path(__file__).resolve().parent.parent
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/simulator/test_properties.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "HYPOTHESIS_PROFILE": "ci"},
        check=False,
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    print(f"CI Hypothesis run: {time.perf_counter() - started:.1f}s ({tail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", default=[], metavar="URL")
    parser.add_argument("--scenarios", type=int, default=10)
    parser.add_argument("--hypothesis", action="store_true", help="also time the CI property run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        backends = args.backend or [f"sqlite:///{folder}/bench.db", *DEFAULT_BACKENDS]
        for url in backends:
            try:
                bench_backend(url, args.scenarios)
            except Exception as exc:  # a server that is not running is skipped
                print(f"{db.display_url(url)}: skipped ({db.one_line(exc)})")
    bench_cli()
    if args.hypothesis:
        bench_hypothesis()


if __name__ == "__main__":
    main()
