"""The speed layer: a PyFlink streaming job from the event log to attributed counts in Redis."""
