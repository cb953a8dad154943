"""What operators see: log lines, metrics, traces, and the redaction that keeps secrets out of them.

    logs.py       logging with the flow id on every line, text or JSON
    metrics.py    the workers' metrics, kept in Redis so that every process adds up
    redaction.py  keeps tokens, keys and webhook secrets out of log lines and messages
    tracing.py    OpenTelemetry traces, one per flow, only with OTEL_EXPORTER_OTLP_ENDPOINT

May import: worker.keys, worker.replies, worker.scripts, worker.queueing (task names, to tell a flow's task).
"""
