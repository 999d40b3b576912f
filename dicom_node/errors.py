"""The one exception tree of dicom-node.

Every error the node raises on purpose derives from :class:`DicomNodeError`, so a
caller can tell our refusals (bad config, bad input, full disk) from bugs.
"""


class DicomNodeError(Exception):
    """Root of every error dicom-node raises on purpose."""


class ConfigError(DicomNodeError):
    """The configuration is invalid; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StorageError(DicomNodeError):
    """A file could not be written to, or read from, the storage root."""


class DiskFullError(StorageError):
    """Free disk space is below the configured guard; nothing is written."""


class InvalidInstanceError(DicomNodeError):
    """A received instance breaks a rule we enforce before storing it."""


class MissingIdentifierError(InvalidInstanceError):
    """The dataset lacks a Study, Series or SOP Instance UID (or one is malformed)."""


class SOPClassMismatchError(InvalidInstanceError):
    """The dataset's SOP Class or Instance UID differs from the C-STORE command."""


class SeriesConflictError(InvalidInstanceError):
    """The Series Instance UID is already recorded under another Study Instance UID."""


class UnreadableDatasetError(InvalidInstanceError):
    """The received byte stream cannot be parsed as a DICOM dataset."""


class DatabaseUnavailableError(DicomNodeError):
    """The database refused or dropped the connection."""


class DatabaseNotFoundError(DatabaseUnavailableError):
    """A command that only reads found no database where the settings point (it creates none)."""


class AnalysisError(DicomNodeError):
    """A study cannot be analysed as it is (no eligible series, an unusable volume).

    Retrying cannot help, so the job goes straight to the dead letter with this reason.
    """

