"""The simulator and checker (SPEC §8): race the producer, retention, backfill and consumers
against a real database, statement by statement, and check the bills against ground truth.

`generate_scenario` makes a scenario from a seed, `run_scenario` runs it, `check` (in
`checker`) judges a run; `shrink` reduces a failing scenario; `picture` draws a run.
"""

from __future__ import annotations
