"""Receive: the C-STORE listener, durable recording and study completion. Never imports torch."""
