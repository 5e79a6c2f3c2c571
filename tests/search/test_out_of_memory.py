"""Ray's out-of-memory kill of a trial worker stops a Ray Tune run with a RuntimeError (Tune does
not count it as a trial failure; seen on full MOSEI with other work on the node): msatune tells it
as one line of what to do instead of a traceback."""

from __future__ import annotations

from ray.exceptions import OutOfMemoryError

from msatune.errors import UserError
from msatune.search.tune_run import OutOfMemory, out_of_memory

RAY_TEXT = ("1 worker(s) were killed due to the node running low on memory. Memory on the node "
            "(IP: 127.0.0.1, ID: c65d) was 22.36GB used / 23.54GB limit (0.950043)\nOOM kill reason: ...")


def _as_tune_raises_it() -> RuntimeError:
    try:
        try:
            raise OutOfMemoryError(RAY_TEXT)
        except OutOfMemoryError as oom:  # ray.air's actor manager wraps it so
            raise RuntimeError(f"Caught unexpected exception: {oom}") from oom
    except RuntimeError as exc:
        return exc


def test_the_out_of_memory_kill_is_recognised_with_its_numbers() -> None:
    assert out_of_memory(_as_tune_raises_it()) == "22.36GB used / 23.54GB limit"
    assert out_of_memory(RuntimeError("Caught unexpected exception: something else")) is None
    assert out_of_memory(ValueError("bad")) is None


def test_it_becomes_one_line_that_says_what_to_do() -> None:
    err = OutOfMemory("22.36GB used / 23.54GB limit", concurrency=2)
    assert isinstance(err, UserError) and err.exit_code == 2
    text = str(err)
    assert "\n" not in text
    for needle in ("ran out of memory (22.36GB used / 23.54GB limit)", "--concurrency 1", "msatune resume",
                   "data info"):
        assert needle in text, needle
    assert "--concurrency" not in str(OutOfMemory("x", concurrency=1))
