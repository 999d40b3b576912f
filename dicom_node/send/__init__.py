"""Send: C-STORE results to the configured destinations, through a database outbox.

This package knows files, SOP classes and statuses; it knows nothing about SEG or SR.
"""
