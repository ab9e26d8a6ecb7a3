"""The one exception type for errors a user can cause (paths, configs, data).

The CLI prints its message as one line, without a traceback, and exits non-zero.
"""


class ReidError(Exception):
    """A user-caused error. The message says what was expected and where."""


def one_line(exc: BaseException) -> str:
    """Return the user-facing line of an error.

    A ReidError raised inside a DataLoader worker comes back wrapped with the worker's
    traceback in its message; the last line holds the original message.
    """
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{ReidError.__module__}.{ReidError.__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(text.split())
