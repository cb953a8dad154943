"""The flow: its states and fields, the store that holds it in Redis, and its atomic transitions.

    flow.py        the flow: its states, its fields, the lifetimes it lives by
    store.py       reading flows, claiming callbacks, taking work, the lease on a task's flow
    transition.py  one transition: what it changes, and the one Lua call that makes it (with its event)
    enqueuer.py    which task works on a flow in which state, and the prepared task message a
                   transition pushes onto the broker in the same Lua step

May import: worker.keys, worker.replies, worker.clock, worker.events, worker.scripts, worker.config,
worker.queueing, worker.observing (a flow's trace context).
"""
