"""Batch and streaming jobs, dataset importers and the training pipeline.

May import `feature_store` and `models`, never `services`.
"""
