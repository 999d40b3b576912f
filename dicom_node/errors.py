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



class SourceDataError(AnalysisError):
    """The source data cannot make a valid object (a builder's ValueError, an impossible
    geometry, a header value of the wrong kind).

    Permanent, like every :class:`AnalysisError`: the same data fails the same way on
    every attempt, so the job is dead at once with this reason instead of being retried.
    Database, storage and peer errors are not this: they pass, and are retried.
    """


class NotApplicableError(DicomNodeError):
    """The study is not one this analysis is for: no series qualifies (not a head, not
    axial CT, only SEG/SR), or the chosen series covers too little to analyse.

    Not a failure: the job ends ``skipped`` with this reason, is not retried, and is not
    counted among failures. No result object is sent for it.
    """
