"""The project's one error base: bad input or environment, told in one line.

Every error a user can cause (a wrong param, a damaged shard, a refused checkpoint, a missing
file) derives from :class:`StarganError` as well as from its natural built-in base, so the entry
points (stage scripts, the ``stargan`` command, a Ray Train worker) catch one class and print its
message as one line with exit status 2, while a bug still shows its traceback.
"""
from __future__ import annotations


class StarganError(Exception):
    """Bad input or environment; the message names what, where, and the fix."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line. An error re-raised by a DataLoader worker carries the
    worker's traceback in its message ("Caught X in DataLoader worker process 0. Original
    Traceback ..."): its last line holds the original message."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        head, sep, rest = last.partition(": ")
        text = rest if sep and "." in head and " " not in head else last
    return " ".join(text.split())
