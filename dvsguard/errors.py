"""The one family of errors the library raises; ``cli.py`` turns them into one-line messages."""


class DvsguardError(Exception):
    """Base class: a problem with the user's input or environment, stated in one line."""


class ConfigError(DvsguardError):
    """A setting or pipeline file is invalid (names the file/key and what was expected)."""


class RecordingError(DvsguardError):
    """An event recording cannot be read (names the file and the cause)."""


class CacheError(DvsguardError):
    """A frame cache is missing, truncated, foreign or built for other settings."""


class CheckpointError(DvsguardError):
    """A checkpoint is missing, malformed, or of another architecture."""


class TrainError(DvsguardError):
    """Training cannot go on (for example a NaN/inf loss)."""


class AttackError(DvsguardError):
    """An attack was misconfigured or its inputs are invalid."""


class ExportError(DvsguardError):
    """A model cannot be exported to netx (names the layer and the value)."""


class OutputError(DvsguardError):
    """An output cannot be written: the disk is full, or the path is of the wrong kind (names the path)."""
