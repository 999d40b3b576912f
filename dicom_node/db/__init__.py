"""The database: the hand-off between the listener, the scheduler and the workers."""
