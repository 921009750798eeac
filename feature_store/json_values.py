"""Values made ready for JSON: JSON has no NaN or infinity, so they are written as null.

A metric that is undefined on its data (a one-class AUC) is NaN; Python's `json.dumps` would write
the bare token `NaN`, which strict readers (jq, browsers, other languages) refuse.
"""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float, at any depth of dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
