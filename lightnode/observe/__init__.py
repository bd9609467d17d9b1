"""Observability: metrics (`metrics`), the query log (`querylog`) and the server log format (`logsetup`).

These modules watch the node; nothing in them is on the path of an answer
except the request observers' `observe()`, which must stay cheap. They import
the standard library, prometheus_client and ujson; lightnode modules only
for types (`http.app.RequestRecord`, `pool.snapshot.PoolSnapshot`) and
`config.model`.
"""
