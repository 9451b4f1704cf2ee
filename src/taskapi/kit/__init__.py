"""Cross-cutting infrastructure shared by every domain package: settings, database, Redis,
errors, logging, metrics, middleware, limits, idempotency, OpenAPI helpers, and the typed
container of the process's services (`services`). Nothing here imports a domain package
(tasks, auth, users, ...)."""
