"""Online learners (DRN-style minor updates between retrains): DBGD and PDGD behind one interface.

The updatable parameters are the ranker's final linear layer `w` over its penultimate features
`h(u, i)`: `score(u, i) = w · h(u, i)` (a bias adds nothing to a ranking). Why only this layer: an
online revision is then one small vector that every worker can swap atomically, the blessed base's
learned representation `h` stays as validated by the quality gate, and a step's size is easy to
bound and to roll back.

- `base`: the `OnlineLearner` interface, `Presentation`, the bounded step;
- `dbgd`: dueling bandit gradient descent as in DRN (Zheng et al., WWW 2018);
- `pdgd`: pairwise differentiable gradient descent (Oosterhuis & de Rijke, CIKM 2018);
- `serving`: an API worker's side: the polled current revision, W/W̃/base interleaved for the learning share;
- `feedback`: interleaved comparisons (teams, attributed clicks) read from the event log;
- `process`: `recsys learn online`: DBGD over them, revisions published, major updates, rollback, kill switch.
"""
