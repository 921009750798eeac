"""`recsys run`: the all-in-one local command behind `make run`."""

from __future__ import annotations
