"""oktopost-connect's command line and developer tooling: the `oktopost-connect` command (main), the
stack that `up` and `demo` run, the embedded Redis, and the one place that spawns processes (which the
bench, run from a checkout, uses too).

The pipeline (worker, api_shim) never imports this package.
"""
