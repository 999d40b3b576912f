"""What an administrator looks at: the state of studies, jobs and deliveries, as text and as a web page.

Read-only by design: nothing here writes to the database or the storage root.
"""
