"""The one family of mistakes a user can make: a command reports a `UserError` as one
`error:` line; anything else is a bug and keeps its traceback.

Each part of the library raises its own subclass (`DataError`, `ConfigError`, ...), so a
caller can still tell them apart; a command catches this base alone.
"""


class UserError(ValueError):
    """A mistake the user can fix; the message names the thing and the fix."""


class DataError(UserError):
    """A dataset on disk that cannot be used as it is; the message names the file and the fix."""
