"""The queue under the tasks: Celery's queue and task names, kombu's Redis transport, tested versions.

    names.py     the Celery queues (flows, webhook deliveries) and task names, without Celery
    broker.py    kombu's Redis transport, surviving a lost Redis, one client per channel
    versions.py  the Celery and kombu versions our hand-built messages and transport change were
                 tested against

May import: nothing of the pipeline; it is the bottom layer beside worker.keys.
"""
