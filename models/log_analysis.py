"""The overfitting story of a Keras CSV training log (numpy and csv only).

Reads a ``keras.callbacks.CSVLogger`` file with the msa-tf2 columns
``epoch,learning_rate,loss,mae,mse,val_loss,val_mae,val_mse`` and reports what the users used to
work out by hand:

- ``best_val_mae`` and ``best_epoch``: the lowest validation MAE and the epoch where it was
  reached, 1-based as Keras prints "Epoch n/N" (Keras' CSVLogger writes that epoch as n-1 in
  its 0-based ``epoch`` column, so ``best_epoch`` is that column's value + 1; without the column,
  the row's position); the first one on ties.
- ``min_train_mae``: the lowest training MAE over all epochs.
- ``gap_at_best`` / ``gap_at_end``: ``val_mae - mae`` (validation minus training) at the best
  epoch and at the last epoch; a large positive gap means overfitting.
- ``instability``: the population standard deviation (ddof=0) of the epoch-to-epoch changes of the
  validation MAE, ``np.std(np.diff(val_mae))``; 0.0 with fewer than two epochs.
- ``still_improving``: validation MAE reached a new best (lower than every earlier epoch) within
  the last :data:`STILL_IMPROVING_WINDOW` (3) epochs of the log, i.e. training stopped while val
  MAE was still going down and more epochs might help. The first epoch is no improvement: a log
  whose best is its first epoch (1.516, 1.818, 1.829) is not improving.
- ``criteria``: the users' success criteria (:data:`CRITERIA`): best val MAE < 1.2 and the gap at
  the best epoch < 0.3, each as ``{"value", "threshold", "pass"}``.

Only ``val_mae`` is required. Without ``mae`` the train MAE and gaps are ``None`` and the gap
criterion's ``pass`` is ``None``. Extra columns are ignored. Empty cells and ``NA``/``nan`` (what
CSVLogger writes for a missing value) read as nan and are skipped; an infinite ``val_mae`` or
``mae`` is an error (a diverged run is not a result), and so is a column named twice.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msatune.errors import UserError

CRITERIA: dict[str, float] = {"val_mae": 1.2, "gap": 0.3}
"""The users' success criteria: best val MAE below 1.2, train/val gap at the best epoch below 0.3."""

STILL_IMPROVING_WINDOW = 3
"""``still_improving`` is true when val MAE reached a new best in the last this-many epochs."""

KNOWN_COLUMNS: tuple[str, ...] = (
    "epoch",
    "learning_rate",
    "lr",
    "loss",
    "mae",
    "mse",
    "val_loss",
    "val_mae",
    "val_mse",
)
_MISSING_CELLS = {"", "na", "nan", "none"}
#: Columns whose values the analysis uses: an infinite value there is an error, not a result.
ANALYZED_COLUMNS = ("val_mae", "mae")


@dataclass
class LogAnalysis:
    """What :func:`analyze_log` finds in one training log."""

    best_val_mae: float
    best_epoch: int
    min_train_mae: float | None
    gap_at_best: float | None
    gap_at_end: float | None
    instability: float
    still_improving: bool
    epochs: int
    criteria: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``msatune analyze --json`` document)."""
        return asdict(self)


def _parse_cell(text: str) -> float | None:
    """The cell as a float (nan for a missing value), or None when it is not a number."""
    stripped = text.strip()
    if stripped.lower() in _MISSING_CELLS:
        return math.nan
    try:
        return float(stripped)
    except ValueError:
        return None


def read_training_log(path: str | Path) -> dict[str, np.ndarray]:
    """The numeric columns of a Keras CSVLogger file, by column name.

    ``val_mae`` is required; ``epoch`` is filled with 0..n-1 when absent. A non-numeric cell in a
    known column (see :data:`KNOWN_COLUMNS`) is an error; an extra column that is not numeric is
    left out.

    Raises:
        UserError: the file is missing or unreadable, empty, has no ``val_mae`` column, a row of
            the wrong length, or a non-numeric cell in a known column.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"training log {p} does not exist; pass a Keras CSVLogger .csv file")
    if not p.is_file():
        raise UserError(f"training log {p} is not a file; pass a Keras CSVLogger .csv file")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read training log {p}: {exc}") from exc

    if not rows:
        raise UserError(
            f"training log {p} is empty; expected a CSV header such as "
            "'epoch,learning_rate,loss,mae,mse,val_loss,val_mae,val_mse' and one row per epoch"
        )
    header = [name.strip() for name in rows[0]]
    twice = sorted({name for name in header if name and header.count(name) > 1})
    if twice:
        raise UserError(f"training log {p} names column(s) {', '.join(twice)} more than once; "
                        "keep one column of each name")
    if "val_mae" not in header:
        raise UserError(
            f"training log {p} has no 'val_mae' column (columns: {','.join(header)}); "
            "expected a Keras CSVLogger file of a model compiled with metrics=['mae']"
        )
    data = rows[1:]
    if not data:
        raise UserError(f"training log {p} has a header but no epoch rows")

    values: dict[str, list[float]] = {name: [] for name in header}
    dropped: set[str] = set()
    for row_no, row in enumerate(data, start=2):  # line 1 is the header
        if len(row) != len(header):
            raise UserError(
                f"training log {p} line {row_no}: {len(row)} cells but the header has "
                f"{len(header)} columns"
            )
        for name, cell in zip(header, row, strict=True):
            if name in dropped:
                continue
            number = _parse_cell(cell)
            if number is not None and math.isinf(number) and name in ANALYZED_COLUMNS:
                raise UserError(
                    f"training log {p} line {row_no}, column '{name}': {cell.strip()} is not a "
                    "finite MAE (the run diverged there); analyze a log of finite values"
                )
            if number is None:
                if name in KNOWN_COLUMNS:
                    raise UserError(
                        f"training log {p} line {row_no}, column '{name}': {cell.strip()!r} "
                        "is not a number"
                    )
                dropped.add(name)
                continue
            values[name].append(number)

    columns = {
        name: np.asarray(vals, dtype=np.float64)
        for name, vals in values.items()
        if name not in dropped and name
    }
    if "epoch" not in columns:
        columns["epoch"] = np.arange(len(data), dtype=np.float64)
    return columns


def instability(val_mae: object) -> float:
    """Std (ddof=0) of the epoch-to-epoch changes of val MAE; nan epochs are skipped."""
    v = np.asarray(val_mae, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return 0.0
    return float(np.std(np.diff(v)))


def _criterion(value: float | None, threshold: float) -> dict[str, Any]:
    passed = None if value is None else bool(value < threshold)
    return {"value": value, "threshold": threshold, "pass": passed}


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def analyze_log(columns_or_path: Mapping[str, object] | str | Path) -> LogAnalysis:
    """Analyze a training log given as a path or as the columns :func:`read_training_log` returns.

    Raises:
        UserError: the log cannot be read, or has no finite val MAE.
    """
    path: str | None = None
    if isinstance(columns_or_path, (str, Path)):
        path = str(columns_or_path)
        columns: Mapping[str, object] = read_training_log(columns_or_path)
    else:
        columns = columns_or_path
    where = f"training log {path}" if path else "training log"
    if "val_mae" not in columns:
        raise UserError(f"{where} has no 'val_mae' column")

    val = np.asarray(columns["val_mae"], dtype=np.float64).reshape(-1)
    n = int(val.size)
    if np.any(np.isinf(val)):
        raise UserError(f"{where}: val_mae holds an infinite value; analyze a log of finite values")
    if n == 0 or not np.any(np.isfinite(val)):
        raise UserError(f"{where} has no finite val_mae value")
    train = columns.get("mae")
    train_arr = None if train is None else np.asarray(train, dtype=np.float64).reshape(-1)

    epoch_col = columns.get("epoch")
    epochs = (
        np.arange(n, dtype=np.float64)
        if epoch_col is None
        else np.asarray(epoch_col, dtype=np.float64).reshape(-1)
    )
    best_idx = int(np.nanargmin(val))
    best_val = float(val[best_idx])
    # 1-based, as Keras prints it: the CSV's 0-based epoch + 1 (the row's position without one)
    best_epoch = (int(epochs[best_idx]) if np.isfinite(epochs[best_idx]) else best_idx) + 1

    min_train: float | None = None
    gap_best: float | None = None
    gap_end: float | None = None
    if train_arr is not None and np.any(np.isfinite(train_arr)):
        min_train = float(np.nanmin(train_arr))
        gap_best = _finite_or_none(val[best_idx] - train_arr[best_idx])
        gap_end = _finite_or_none(val[-1] - train_arr[-1])

    criteria = {
        f"val_mae_below_{CRITERIA['val_mae']}": _criterion(best_val, CRITERIA["val_mae"]),
        f"gap_below_{CRITERIA['gap']}": _criterion(gap_best, CRITERIA["gap"]),
    }
    return LogAnalysis(
        best_val_mae=best_val,
        best_epoch=best_epoch,
        min_train_mae=min_train,
        gap_at_best=gap_best,
        gap_at_end=gap_end,
        instability=instability(val),
        still_improving=bool(best_idx > 0 and n - 1 - best_idx < STILL_IMPROVING_WINDOW),
        epochs=n,
        criteria=criteria,
        path=path,
    )
