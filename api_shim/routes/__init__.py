"""The shim's routes, one router per concern: callers' authorizations, browsers' callbacks, probes."""
