"""The `usageledger` command line: click commands, rich rendering, errors mapped to exit codes.

Only this package prints. Exit codes (SPEC §9): 0 success; 1 a check failed or the work failed;
2 bad usage or input; 3 another run holds the run lock; 4 a consumer fell behind retention.
"""

from __future__ import annotations

import sys

from usageledger.cli.root import cli, run


def main() -> None:
    sys.exit(run(cli, sys.argv[1:]))


__all__ = ["cli", "main"]
