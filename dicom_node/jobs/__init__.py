"""Jobs: the database-backed queue between a complete study and its analysis."""
