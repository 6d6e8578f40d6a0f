"""The agent: the long-running service, its jobs, their rounds of transfers, and status."""
