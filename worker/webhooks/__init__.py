"""Signed webhooks: every event of a tenant's flows POSTed to the endpoints the tenant registered.

`urls` decides which URLs may be reached (no internal addresses, checked again at each delivery),
`endpoints` keeps endpoints and deliveries in Redis, `dispatcher` turns the all-flows stream into
deliveries, `delivery` makes one signed attempt and decides when the next one comes.

May import: worker.keys, worker.events, worker.scripts, worker.config, worker.observing, worker.follow,
worker.oktopost (its whole-attempt deadline for HTTP, `deadline`).
"""
