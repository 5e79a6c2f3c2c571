"""How much memory a trial needs on a dataset, and which splits it streams from HDF5.

What a trial holds, measured on the full ``mosei`` preset (1.9 GiB of float32 arrays; the
numbers are in the commit that added this module):

* the dataset's arrays, once (``load_dataset``; in a study they come through Ray's object store,
  whose numpy arrays are read in place from shared memory, so trials on one machine share them);
* TensorFlow, Keras and a model in training: :data:`TRIAL_RUNTIME_BYTES`.

The input pipelines (:mod:`msatune.augment.pipeline`) gather each batch from those arrays when
it is needed: no copy of a split in TensorFlow, no samples in the shuffle buffer (until
2026-12-06 both were there: 2.8 GB more per trial on MOSEI, 6.0 against 3.2 GB of peak RSS for
one ``msatune train``). A split larger than :func:`stream_threshold` is read from its HDF5 files
a batch at a time instead (:func:`streamed_splits`).

This module must not import TensorFlow (``msatune data info`` stays fast).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: TensorFlow + Keras + one model training on MOSEI-shaped batches, beyond the data's copies
#: (measured peak RSS of a one-epoch trial minus its data copies: 0.9 to 1.2 GiB).
TRIAL_RUNTIME_BYTES = int(1.25 * 2**30)
#: Splits larger than this many bytes are streamed from HDF5 (default: half the machine's memory).
STREAM_ENV = "MSATUNE_STREAM_ABOVE_BYTES"


def machine_memory() -> int | None:
    """This machine's memory in bytes (a cgroup's limit when lower), or None when unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return int(total)


def stream_threshold() -> int | None:
    """Bytes above which a split is streamed: ``$MSATUNE_STREAM_ABOVE_BYTES``, else half the
    machine's memory (a split that cannot be held twice), None when neither is known."""
    raw = os.environ.get(STREAM_ENV, "").strip()
    if raw:
        try:
            return max(0, int(float(raw)))
        except ValueError:
            from msatune.errors import UserError

            raise UserError(
                f"${STREAM_ENV}={raw!r} is not a number of bytes; unset it or give e.g. 8e9"
            ) from None
    total = machine_memory()
    return None if total is None else total // 2


def streamed_splits(split_bytes: Mapping[str, int], threshold: int | None = None) -> set[str]:
    """The splits a trial reads from HDF5 in batches: those over ``threshold`` (default
    :func:`stream_threshold`)."""
    limit = stream_threshold() if threshold is None else threshold
    return {name for name, b in split_bytes.items() if limit is not None and b > limit}


@dataclass(frozen=True)
class TrialMemory:
    """A trial's memory need on a dataset, in bytes, and what it is made of."""

    data: int  # all splits' arrays
    runtime: int
    streamed: tuple[str, ...]
    machine: int | None

    @property
    def total(self) -> int:
        return self.data + self.runtime

    def describe(self) -> str:
        """One line: the need, its parts and the machine's memory."""
        gb = _gb
        streamed = f"; streamed from HDF5: {', '.join(self.streamed)}" if self.streamed else ""
        machine = "unknown" if self.machine is None else gb(self.machine)
        return (f"a trial needs about {gb(self.total)}: the arrays {gb(self.data)} + "
                f"TensorFlow/Keras {gb(self.runtime)}{streamed} (this machine has {machine}; in "
                f"a study the trials on one machine share the arrays through Ray's object store, "
                f"so each trial after the first adds about {gb(self.runtime)})")

    def as_json(self) -> dict[str, object]:
        return {"trial_bytes": self.total, "data_bytes": self.data, "runtime_bytes": self.runtime,
                "streamed_splits": list(self.streamed), "machine_bytes": self.machine}


def split_bytes(splits: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of each split's arrays (features and labels) of an :class:`MSADataset`'s splits."""
    return {name: sum(a.nbytes for a in s.arrays().values()) for name, s in splits.items()}


def trial_memory(split_bytes: Mapping[str, int], threshold: int | None = None) -> TrialMemory:
    """A trial's memory need from each split's array bytes (features + labels)."""
    streamed = streamed_splits(split_bytes, threshold)
    return TrialMemory(
        data=sum(split_bytes.values()),
        runtime=TRIAL_RUNTIME_BYTES,
        streamed=tuple(n for n in split_bytes if n in streamed),
        machine=machine_memory(),
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
