"""One driver per study: a lease in the store (driver id, host, pid, heartbeat).

Two drivers on one study corrupt it: the second one's reconciliation fails the first one's
RUNNING trials and re-queues them, and the first one then dies on trials it can no longer
finish. A driver therefore holds the study's lease (study user attr ``msatune:lease``) for as
long as it runs and renews its heartbeat every :data:`HEARTBEAT_S` seconds. Another driver,
``msatune resume`` or ``msatune delete`` is refused while the holder is alive:

* on the same host, while its pid exists (and is the same process: its start time is recorded),
  so a driver killed with ``kill -9`` is taken over at once;
* across hosts, while its heartbeat is younger than :func:`stale_after_s` seconds
  (``$MSATUNE_LEASE_TIMEOUT_S``, default 90).

Taking the lease is write-then-verify (the store has no compare-and-set for user attrs): two
drivers that start within the same instant are told apart by re-reading the lease after
:data:`VERIFY_DELAY_S`; the later writer keeps it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.processes import alive, process_start_ticks
from msatune.studies.store.studies import ATTR_PREFIX
from msatune.thirdparty.optuna_internals import study_id, study_storage

log = logging.getLogger(__name__)

LEASE_KEY = ATTR_PREFIX + "lease"
HEARTBEAT_S = 10.0
VERIFY_DELAY_S = 0.5
TIMEOUT_ENV = "MSATUNE_LEASE_TIMEOUT_S"


def stale_after_s() -> float:
    """Seconds without a heartbeat after which another host's lease may be taken over."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV, "90")))
    except ValueError:
        return 90.0


@dataclass
class Lease:
    driver: str
    host: str
    pid: int
    heartbeat: float
    started: int | None = None
    command: str = ""

    def holder_alive(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname():
            if not alive(self.pid):
                return False
            return self.started is None or process_start_ticks(self.pid) in (None, self.started)
        return (now or time.time()) - self.heartbeat < stale_after_s()

    def describe(self, now: float | None = None) -> str:
        age = max(0.0, (now or time.time()) - self.heartbeat)
        what = f"msatune {self.command}" if self.command else "a driver"
        return f"{what} (pid {self.pid} on host {self.host}, heartbeat {age:.0f} s ago)"


def read_lease(storage: optuna.storages.BaseStorage, study_id: int) -> Lease | None:
    """The lease recorded on the study, fresh from the store (``None``: no lease)."""
    raw = storage.get_study_user_attrs(study_id).get(LEASE_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return Lease(driver=str(raw["driver"]), host=str(raw["host"]), pid=int(raw["pid"]),
                     heartbeat=float(raw["heartbeat"]), started=raw.get("started"),
                     command=str(raw.get("command", "")))
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring an unreadable lease on study %d: %r", study_id, raw)
        return None


def live_holder(study: optuna.Study) -> Lease | None:
    """The lease of the live driver that holds ``study``, or ``None`` when it is free."""
    lease = read_lease(study_storage(study), study_id(study))
    return lease if lease is not None and lease.holder_alive() else None


def check_free(study: optuna.Study, action: str) -> None:
    """Raise a UserError when a live driver holds ``study`` (``action`` says what was refused)."""
    holder = live_holder(study)
    if holder is not None:
        raise UserError(
            f"cannot {action} study {study.study_name!r}: {holder.describe()} is running it; "
            "wait for it to end or stop it (Ctrl-C); a driver that died is taken over "
            f"automatically (on another host after {stale_after_s():.0f} s without a heartbeat)"
        )


class StudyLease:
    """Hold ``study``'s lease for the duration of a ``with`` block, renewing its heartbeat.

    Raises:
        UserError: on entry, when a live driver holds the study.
    """

    def __init__(self, study: optuna.Study, command: str) -> None:
        self.study = study
        self.command = command
        self.driver = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return asdict(Lease(driver=self.driver, host=socket.gethostname(), pid=pid,
                            heartbeat=time.time(), started=process_start_ticks(pid),
                            command=self.command))

    def _write(self) -> None:
        study_storage(self.study).set_study_user_attr(study_id(self.study), LEASE_KEY, self._record())

    def __enter__(self) -> StudyLease:
        check_free(self.study, self.command)
        self._write()
        time.sleep(VERIFY_DELAY_S)
        now = read_lease(study_storage(self.study), study_id(self.study))
        if now is None or now.driver != self.driver:
            check_free(self.study, self.command)  # another driver took it meanwhile
            raise UserError(f"cannot {self.command} study {self.study.study_name!r}: another "
                            "driver started at the same moment; try again")
        self._thread = threading.Thread(target=self._beat, name="msatune-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                lease = read_lease(study_storage(self.study), study_id(self.study))
                if lease is not None and lease.driver != self.driver:
                    # a driver that stalled past the timeout was taken over: never take it back
                    log.error("study %s was taken over by %s (pid %d on %s) while this driver "
                              "stalled; no longer renewing its lease", self.study.study_name,
                              lease.command, lease.pid, lease.host)
                    return
                self._write()
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not end the run
                log.warning("could not renew the lease of study %s: %s", self.study.study_name, exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            lease = read_lease(study_storage(self.study), study_id(self.study))
            if lease is not None and lease.driver == self.driver:
                study_storage(self.study).set_study_user_attr(study_id(self.study), LEASE_KEY, None)
        except KeyError:
            pass  # the study itself was deleted under the lease (msatune delete)
        except Exception as exc:  # noqa: BLE001 - the lease goes stale by itself
            log.warning("could not release the lease of study %s: %s", self.study.study_name, exc)
