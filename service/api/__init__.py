"""The HTTP layer: routes (``routes/``), their dependencies and the API token (``deps``,
``auth``, ``credentials``), request guards (``middleware``), response bodies and the views
that make them from domain objects (``schemas``, ``views``), the answers to domain errors
(``errors``), metrics and logs (``observability``). Only this package speaks HTTP."""
