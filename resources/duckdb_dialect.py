"""duckdb_engine's SQLAlchemy dialect with SQLAlchemy's compiled-statement cache on.

duckdb_engine leaves the cache off (`supports_statement_cache = False`, not certified), so every statement was
compiled again on each execution: 1-3 ms of a cheap insights request and ~11 ms of a correlations request at 1M
traces. Our statements are plain SQLAlchemy Core (values bound, our own constants as literal text, which is part
of the cache key), which the cache handles; the whole test suite runs through it. Engines use it as
`duckdb+cached://` (registered in resources/warehouse.py)."""

from duckdb_engine import Dialect


class CachingDialect(Dialect):
    supports_statement_cache = True
