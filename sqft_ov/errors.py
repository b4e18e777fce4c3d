"""The one exception type users see: a message that names the fix, printed as one line by the CLI."""


class SqftError(Exception):
    """Bad input or an impossible request. The message says what is wrong and how to fix it."""
