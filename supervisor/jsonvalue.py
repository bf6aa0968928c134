"""An entry's value as JSON, for the command line and the HTTP service.

msgpack carries more than JSON can: bytes go out as base64 text (so the output
stays one valid JSON document); NaN and infinities, which JSON has no words
for, are refused rather than printed as the invalid `NaN`.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """JSON text for `value`; raises ValueError (with the reason) for what JSON cannot hold."""
    try:
        return json.dumps(value, default=_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"the value cannot be written as JSON: {exc}") from None
