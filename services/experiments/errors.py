"""Experiment errors, each with the HTTP status the API answers it with."""

from __future__ import annotations


class ExperimentError(ValueError):
    """A request about experiments the service cannot honour."""

    status_code = 400


class InvalidExperimentError(ExperimentError):
    """A definition that cannot run (unknown ranker version, bad shares)."""

    status_code = 422


class ExperimentConflictError(ExperimentError):
    """A definition that clashes with a stored one (same id, overlapping traffic in a layer)."""

    status_code = 409


class UnknownExperimentError(ExperimentError):
    status_code = 404


class ExperimentStoreUnavailableError(ExperimentError):
    """Redis, which every worker reads experiments from, did not answer: the change was not made."""

    status_code = 503
