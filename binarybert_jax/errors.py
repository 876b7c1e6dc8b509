"""The project's error type for bad input: what a person can fix by changing a flag, a file or a path.

Every message names the problem (file, key, value, shape, the allowed values) and what to do. The
mains (``launch/``) print a ``UserError`` as one line and exit 2 without a traceback; any other
exception is a defect and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input, described in one readable message."""


class ConfigError(UserError):
    """A config value outside its allowed range, or a config that does not fit the workdir."""
