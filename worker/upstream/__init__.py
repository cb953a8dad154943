"""Calling Oktopost within its limits: retries to the deadline, the shared budget, the account's pause.

    retry.py    the deadline-driven retry policy (tenacity), for the worker and the shim's Step 1
    budget.py   the rate budget shared through Redis by every process, earliest deadline first
    account.py  the Oktopost account as a whole: its pause after a 429, its daily count, admissions
    parking.py  flows parked while their account has no budget, and the unparker that releases them
    clients.py  each Oktopost account's client and budget in a process, built once and reused

May import: worker.keys, worker.replies, worker.threads, worker.events, worker.scripts, worker.config,
worker.flows, worker.oktopost, worker.observing (a flow's trace context).
"""
