"""Interoperability proofs: OHIF parsers, DICOMweb via Orthanc, PixelMed validation."""
