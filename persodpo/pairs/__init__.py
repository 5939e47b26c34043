"""The pairs stage."""
