"""What users see when something is off: the one exception type (a message that names the fix, printed as
one line by the CLI), and the warning an old option spelling prints."""

import sys


class SqftError(Exception):
    """Bad input or an impossible request. The message says what is wrong and how to fix it."""


def warn_deprecated(old: str, new: str) -> None:
    """An old spelling still works (it is in users' scripts) but says, on stderr, what replaced it."""
    print(f"warning: {old} is deprecated: use {new}", file=sys.stderr, flush=True)
