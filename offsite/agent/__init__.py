"""The agent: the long-running service, per-job dispatch, schedules and status."""
