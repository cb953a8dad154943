"""After the connection: every credential a flow connected, kept as a connection of its tenant, its
health checked against Oktopost, and its deletion.

    records.py  the connection as callers see it, and the store that keeps, lists and removes them
    checks.py   one check of an account's connections: its lock, its spare-budget calls, its changes
    deletion.py removing a connection: Oktopost's DELETE within the account's budget, then the event

A flow's completion makes connections in its own Lua step (worker.flows.store.complete).

May import: worker.config, worker.observing, worker.oktopost, worker.upstream.
"""
