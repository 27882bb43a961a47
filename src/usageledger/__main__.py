"""`python -m usageledger` runs the command line."""

from usageledger.cli import main

main()
