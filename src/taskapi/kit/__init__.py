"""Cross-cutting infrastructure shared by every domain package: settings, database, Redis,
errors, logging, metrics, middleware, limits, idempotency, OpenAPI helpers. Nothing here imports
a domain package (tasks, auth, users, ...)."""
