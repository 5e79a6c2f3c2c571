"""What a command may overwrite: a file it wrote itself, another file only when told (``--force``),
a SQLite database (a study store) never."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from msatune.errors import UserError

#: The first bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_output_file(path: Path, ours: Callable[[bytes], bool], *, force: bool = False,
                      option: str = "--out", what: str = "an output of msatune's") -> None:
    """A UserError unless ``path`` may be (re)written: it does not exist, or ``ours(first 4 KiB)``
    says msatune wrote it, or ``force`` and it is a regular file that is no SQLite database."""
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise UserError(f"{option} {path}: {path.parent} is not a directory")
        return
    if not path.is_file():
        raise UserError(f"{option} {path}: exists and is not a regular file; choose a file name")
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot read it to check what it is ({exc.strerror or exc})") from None
    if head.startswith(SQLITE_MAGIC):
        raise UserError(f"{option} {path} is a SQLite database (a study store?); it is never overwritten: "
                        "choose another file name")
    if force or ours(head):
        return
    raise UserError(f"{option} {path} exists and is not {what}; choose another file name, or pass "
                    "--force to replace it")


def header_line(head: bytes) -> str:
    """The first line of a file's head, stripped (for ``ours`` checks on a header)."""
    return head.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
