"""Route modules: ``health`` (probes, metrics) and ``sessions`` (v1)."""
