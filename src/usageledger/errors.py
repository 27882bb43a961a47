"""The project's exceptions. The command line maps each to an exit code (SPEC §9)."""

from __future__ import annotations


class UsageLedgerError(Exception):
    """Root of every error usageledger raises on purpose; the message is one line for a person."""

    exit_code = 1


class BadInputError(UsageLedgerError):
    """Bad usage or input: an option value, a URL, a database that cannot be used (exit 2)."""

    exit_code = 2


class DatabaseUnavailableError(BadInputError):
    """The database could not be reached with the given URL."""


class SchemaMissingError(BadInputError):
    """The database answers but does not hold usageledger's schema."""


class SourceResetError(BadInputError):
    """A consumer's cursor is above every id of its source table: the table was recreated or
    its ids restarted, so the ledger belongs to another history (C1)."""


class LockHeldError(UsageLedgerError):
    """Another run holds the run lock (exit 3)."""

    exit_code = 3


class FellBehindRetentionError(UsageLedgerError):
    """A consumer's cursor points below rows that retention already deleted (exit 4)."""

    exit_code = 4


# --- producer -------------------------------------------------------------------------------


class ResourceNotFoundError(BadInputError):
    """A producer operation named a resource guid that does not exist."""


class InvalidTransitionError(BadInputError):
    """A producer operation asked for a state change the platform does not allow."""


# --- simulator ------------------------------------------------------------------------------


class ReplayDivergenceError(UsageLedgerError):
    """A replayed simulator schedule no longer matches what the actors do (S1)."""


class StuckRunError(UsageLedgerError):
    """No simulator actor could move for too long; the run's outcome is unknown."""
