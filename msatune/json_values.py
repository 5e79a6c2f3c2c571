"""Plain JSON values from what msatune computes: numpy scalars and arrays, paths, NaN/inf.

Every JSON msatune writes (checkpoint configs, ``--json`` output, reports, ensemble records)
goes through :func:`jsonable`, so NaN and inf become ``null`` (strict JSON) and numpy values
become Python ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values, paths as str, NaN/inf as None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist) and not isinstance(obj, (str, bytes)):
        return jsonable(tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: numpy values and paths as JSON; anything else is an error
    (NaN/inf are left to ``allow_nan``: strict writers refuse them, see :func:`jsonable`)."""
    if isinstance(obj, PurePath):
        return str(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
