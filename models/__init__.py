"""Models: embeddings (Item2vec, DeepWalk, Node2vec), recall indexes, rankers, offline
evaluation and the model registry. Imports only `feature_store` among our packages."""
