"""The few questions msatune asks an RDB study store in SQL, for studies too big to load whole.

Optuna's public API answers every question by loading every trial (seconds at 2,000 trials);
``msatune studies`` and ``show`` need counts, a ranking and a handful of trials. This module is
the one place that reads Optuna's tables directly. It reads the RDB schema of Optuna 3.2 and
later (schema version 12, unchanged through Optuna 5.0):

* ``trials`` (trial_id, number, study_id, state: enum name such as ``COMPLETE``)
* ``trial_values`` (trial_id, objective, value, value_type: ``FINITE`` / ``INF_POS`` / ``INF_NEG``)
* ``trial_user_attributes`` (trial_id, key, value_json)

:func:`rdb_of` returns ``None`` for other storages (journal, in-memory) and for an RDB store of
another schema revision: callers then fall back to Optuna's API (slower, never wrong).
"""

from __future__ import annotations

from typing import Any

import optuna

from msatune.thirdparty.optuna_internals import uncached

#: Optuna RDB schema revisions (``RDBStorage.get_current_version()``) whose tables these
#: queries read.
SCHEMA_REVISIONS = ("v3.2.0.a",)

_checked: dict[int, bool] = {}


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDB storage behind ``storage`` (Optuna's cache wraps one) when its schema is one
    these queries read, else ``None``."""
    inner = uncached(storage)
    if not isinstance(inner, optuna.storages.RDBStorage):
        return None
    key = id(inner.engine)
    if key not in _checked:
        _checked[key] = inner.get_current_version() in SCHEMA_REVISIONS
    return inner if _checked[key] else None


def _rows(storage: optuna.storages.RDBStorage, sql: str, **params: Any) -> list[tuple]:
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def state_counts(storage: optuna.storages.RDBStorage, study_id: int, interrupted_key: str,
                 requeued_attr: str) -> dict[str, int]:
    """Trials per state name (every state present, zeros included); FAIL trials carrying user
    attr ``requeued_attr`` = true are counted under ``interrupted_key`` instead of FAIL."""
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for state, n in _rows(storage, "SELECT state, COUNT(*) FROM trials WHERE study_id = :sid "
                                   "GROUP BY state", sid=study_id):
        counts[str(state)] = int(n)
    (requeued,), = _rows(
        storage,
        "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.study_id = :sid AND t.state = 'FAIL' AND a.key = :key AND a.value_json = 'true'",
        sid=study_id, key=requeued_attr)
    counts[interrupted_key] = int(requeued)
    counts["FAIL"] -= int(requeued)
    return counts


def best_complete_ids(storage: optuna.storages.RDBStorage, study_id: int, limit: int) -> list[int]:
    """trial_ids of the COMPLETE trials with a finite value, lowest value first (ties: number)."""
    return [r[0] for r in _rows(
        storage,
        "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
        "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = 0 "
        "AND v.value_type = 'FINITE' ORDER BY v.value, t.number LIMIT :limit",
        sid=study_id, limit=int(limit))]


def ids_with_user_attr(storage: optuna.storages.RDBStorage, study_id: int, key: str) -> list[int]:
    """trial_ids of the trials that carry user attr ``key``, by trial number."""
    return [r[0] for r in _rows(
        storage,
        "SELECT t.trial_id FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.study_id = :sid AND a.key = :key ORDER BY t.number",
        sid=study_id, key=key)]


def ids_in_state(storage: optuna.storages.RDBStorage, study_id: int, state: str, limit: int) -> list[int]:
    """trial_ids of the first ``limit`` trials in ``state`` (a TrialState name), by number."""
    return [r[0] for r in _rows(
        storage,
        "SELECT trial_id FROM trials WHERE study_id = :sid AND state = :state "
        "ORDER BY number LIMIT :limit",
        sid=study_id, state=state, limit=int(limit))]


def listed_ids(storage: optuna.storages.RDBStorage, study_id: int, kinds: tuple[str, ...],
               limit: int, interrupted_key: str, requeued_attr: str) -> list[int]:
    """trial_ids of the first ``limit`` trials whose state name is in ``kinds`` (FAIL trials with
    user attr ``requeued_attr`` = true count as ``interrupted_key``, not FAIL): finite values
    first, lowest first, then the rest; ties by number."""
    if not kinds:
        return []
    names = {f"k{i}": k for i, k in enumerate(kinds)}
    return [r[0] for r in _rows(
        storage,
        "SELECT t.trial_id FROM trials t "
        "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = :rq "
        "WHERE t.study_id = :sid AND (CASE WHEN CAST(t.state AS VARCHAR(16)) = 'FAIL' "
        "AND a.value_json = 'true' THEN :ik ELSE CAST(t.state AS VARCHAR(16)) END) "
        f"IN ({', '.join(':' + k for k in names)}) "
        "ORDER BY CASE WHEN v.value_type = 'FINITE' THEN 0 ELSE 1 END, v.value, t.number "
        "LIMIT :limit",
        sid=study_id, rq=requeued_attr, ik=interrupted_key, limit=int(limit), **names)]
