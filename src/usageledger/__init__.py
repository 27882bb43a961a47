"""usageledger: keep, backfill and consume usage events; billing never loses a running resource."""

__version__ = "0.1.0"
