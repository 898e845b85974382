"""Fault and hostile-input tests (issue 18): store outages, races, hung workers, hostile requests."""
