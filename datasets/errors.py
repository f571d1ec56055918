"""The one error type a user can cause.

Every bad input (a corrupt DICOM, a missing mask, a typo in a config, a path that does not exist) raises an
`EssgridError` whose message names the file, field or value. The CLI prints it and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class EssgridError(ValueError):
    """A problem with the user's input, data or configuration; the message names the file or field."""


class ChaosError(EssgridError):
    """A CHAOS (or phantom) tree that cannot be read as CHAOS lays it out."""


class StoreError(EssgridError):
    """A slice store that is torn, foreign, or written with another configuration."""


class ConfigError(EssgridError):
    """A configuration key or value that is unknown or out of range."""
