"""Hypothesis strategies for simulator scenarios (S7, §9): small sizes, any seed, both
scheduling strategies, swarm-style switches (each actor kind and fault on or off per example).
Hypothesis shrinks these toward fewer resources, actors and faults."""

from __future__ import annotations

from hypothesis import strategies as st

from usageledger.simulator.scenario import (
    ActorMix,
    FaultSwitches,
    Scenario,
    Sizes,
    generate_scenario,
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    sizes = Sizes(
        apps=draw(st.integers(1, 2)),
        processes=draw(st.integers(0, 3)),
        tasks=draw(st.integers(0, 3)),
        service_instances=draw(st.integers(0, 2)),
        builds=draw(st.integers(0, 1)),
        legacy=draw(st.integers(0, 3)),
        stale_baselines=draw(st.integers(0, 1)),
    )
    mix = ActorMix(
        producers=draw(st.integers(1, 2)),
        cleanup_runs=draw(st.integers(0, 2)),
        old_cleanup_runs=draw(st.integers(0, 1)),
        backfills=draw(st.integers(0, 2)),
        backfill_runs=draw(st.integers(1, 2)),
        consumers=("reference",),
        late_consumer=draw(st.booleans()),
        purge_and_reseed=draw(st.integers(0, 1)),
    )
    faults = FaultSwitches(
        kill_connection=draw(st.booleans()),
        crash_between_passes=draw(st.booleans()),
        crash_mid_backfill=draw(st.booleans()),
        consumer_restart=draw(st.booleans()),
        kill_probability=0.02,
    )
    return generate_scenario(
        draw(st.integers(0, 2**31)),
        sizes=sizes,
        span_days=draw(st.integers(35, 60)),
        mix=mix,
        faults=faults,
        strategy=draw(st.sampled_from(["random", "pct"])),
        polls=draw(st.integers(3, 10)),
    )
