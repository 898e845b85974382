"""Training utilities for the project-trained demo models (procedural style targets)."""
