"""What runs in a worker process: the Celery app, its tasks, and the background threads beside them.

    celery_app.py    the Celery app (`celery -A worker` finds it through worker/__init__.py)
    celery_tasks.py  the tasks: a flow id (or delivery id) in, an outcome out; starts and stops the
                     sweeper, the unparker and the webhook dispatcher with the worker
    work.py          what a task does with a flow: take it, call Oktopost until the deadline, record
    runtime.py       the process's shared objects (store, clients, budgets), built once from settings
    leases.py        the heartbeat that renews the leases of the process's tasks
    sweeper.py       ends flows past their deadline, takes up flows whose worker stopped

May import: every other part of worker/ (it is the top layer); nothing imports it but worker/__init__.py
and the shim's runtime objects.
"""
