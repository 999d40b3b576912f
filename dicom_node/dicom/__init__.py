"""DICOM building blocks shared by the listener and the sender: contexts, storage, TLS."""
