"""The speed layer: a PyFlink streaming job from the event log to live features in Redis."""
