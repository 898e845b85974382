"""The REST API v1 (server process): thin routes, pydantic schemas, typed dependencies, JSON errors."""
