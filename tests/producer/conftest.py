"""Fixtures for the producer tests: a small platform (org, space, app with a staged droplet) on
every backend, and a simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest
from sqlalchemy.engine import Engine

from usageledger import producer
from usageledger.clock import SimulatedClock

BUILDPACK_GUID = "buildpack-guid-ruby"
BUILDPACK_NAME = "ruby_buildpack"


@attrs.frozen
class World:
    org: str
    space: str
    app: str
    package: str
    droplet: str


@pytest.fixture
def world(engine: Engine) -> World:
    """An org, a space, an app whose current droplet is STAGED from its only package."""
    org = producer.create_organization(engine, "org-one")
    space = producer.create_space(engine, org, "space-one")
    app = producer.create_app(engine, space, "app-one")
    package = producer.create_package(engine, app)
    droplet = producer.create_droplet(
        engine, app, package, buildpack_guid=BUILDPACK_GUID, buildpack_name=BUILDPACK_NAME
    )
    return World(org=org, space=space, app=app, package=package, droplet=droplet)


@pytest.fixture
def clock() -> SimulatedClock:
    """A simulated clock with microseconds, so that rounding would show."""
    return SimulatedClock(datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC))
