"""dicom-node: a DICOM AI node for intracranial-hemorrhage detection on head CT.

Research use only; the results it produces are not for diagnosis.
"""

__version__ = "0.1.0"
