"""Error types. Every user-facing failure is a `MopsError` whose message says what to fix."""


class MopsError(Exception):
    """Base class: the CLI prints the message (no stack trace) and exits with status 2."""


class DataError(MopsError):
    """Bad or missing data: the message names the file, line and field."""


class ModelLoadError(MopsError):
    """A base model or adapter could not be found, installed or read."""


class ConfigError(MopsError):
    """An invalid setting: the message names the field and the allowed values."""
