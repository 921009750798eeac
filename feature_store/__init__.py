"""Schemas, settings, the event log and the feature store: the bottom layer, importing nothing else of ours."""
