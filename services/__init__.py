"""Processes: the FastAPI service, request-time recommendation logic, experiments, the scheduler and the CLI."""
