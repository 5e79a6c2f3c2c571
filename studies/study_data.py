"""The one check that a study's data is still the data it ran on.

A study records its dataset's path and fingerprint at launch (and whether labels are clipped).
Whatever uses that data again (``resume``, ``refit``, an ensemble's error floor and export check,
the bagged ensemble's test score, the report's yardsticks) loads it through :func:`study_data`,
which refuses a dataset that is gone or changed, in one line that says what the data was
needed for; :func:`study_data_or_none` is the lenient form, for uses that can do without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msatune.augment.dataset import MSADataset, load_dataset
from msatune.errors import UserError


def study_data(attrs: dict[str, Any], name: str, *, needed_for: str, force: bool = False) -> MSADataset:
    """The dataset study ``name`` ran on (``attrs``: its msatune attrs), loaded as it was (labels
    clipped if the study clips them).

    Raises:
        UserError: the study records no dataset, it is not there, or its content is not the
            recorded fingerprint (unless ``force``); the message ends with ``needed_for`` (why the data is needed, or what
            to do).
    """
    path = attrs.get("data_path")
    if not path:
        raise UserError(f"study {name!r} records no dataset; {needed_for}")
    if not Path(path).is_dir():
        raise UserError(f"the dataset of study {name!r} ({path}) is not there; {needed_for}")
    data = load_dataset(path, clip_labels=bool(attrs.get("clip_labels", False)))
    want = str(attrs.get("data_fingerprint") or "")
    if want and data.fingerprint != want and not force:
        raise UserError(f"the data of study {name!r} changed ({path}: fingerprint {data.fingerprint[:12]} "
                        f"!= recorded {want[:12]}); {needed_for}")
    return data


def study_data_or_none(attrs: dict[str, Any], name: str, warnings: list[str] | None = None, *,
                       without: str = "") -> MSADataset | None:
    """:func:`study_data`, or None when it is gone, unreadable or changed; then (with
    ``warnings``) a warning saying so and what is done ``without`` it."""
    if not attrs.get("data_path"):
        return None
    try:
        return study_data(attrs, name, needed_for=without or "used without it")
    except UserError as exc:
        if warnings is not None:
            warnings.append(str(exc))
        return None
