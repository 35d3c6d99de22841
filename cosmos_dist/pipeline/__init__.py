"""The pipelines: a prompt's path from text to video (base.py holds the run order; see docs/ARCHITECTURE.md)."""
