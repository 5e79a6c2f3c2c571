"""The one error type for user mistakes (bad input, bad options, unknown names).

Library code raises :class:`UserError` with a one-line message that says what is wrong, where
(file, key, study) and how to fix it. The CLI prints it as ``msatune: error: <message>`` and
exits with status 2, without a traceback (unless ``--debug``).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message is one line and is shown as is."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would break the CLI's contract.
        super().__init__(" ".join(str(message).split()))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a
    one-line UserError quotes of a library's multi-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
