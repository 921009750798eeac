"""Online learners (DRN-style minor updates between retrains): DBGD and PDGD behind one interface.

The updatable parameters are the ranker's final linear layer `w` over its penultimate features
`h(u, i)`: `score(u, i) = w · h(u, i)` (a bias adds nothing to a ranking). Why only this layer: an
online revision is then one small vector that every worker can swap atomically, the blessed base's
learned representation `h` stays as validated by the quality gate, and a step's size is easy to
bound and to roll back.

- `base`: the `OnlineLearner` interface, `Presentation`, the bounded step;
- `dbgd`: dueling bandit gradient descent as in DRN (Zheng et al., WWW 2018);
- `pdgd`: pairwise differentiable gradient descent (Oosterhuis & de Rijke, CIKM 2018);
- `gate`: serve the learned weights only once they beat the base in team-draft comparisons (library
  and benchmark only; not wired into `process`/`serving` yet);
- `serving`: an API worker's side: the polled current revision, W/W̃/base interleaved (DBGD) or W's
  Plackett–Luce list (PDGD) for the learning share (arm `online` of experiment `learner`), the
  plain list for its control slice (arm `control`);
- `shown`: PDGD's served lists' features in Redis by user and request id (written off the request path);
- `feedback`: the learner's served lists (teams, attributed clicks) read from the event log;
- `process`: `recsys learn online`: DBGD or PDGD over them, revisions published, major updates,
  rollback (preference against the base, or the `learner` experiment's guardrail), kill switch.
"""
