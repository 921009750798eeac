"""The simulator (`recsys simulate`): a synthetic population with a known click model that drives
the live API over HTTP, so a policy can be measured against ground truth before real traffic.

- `population`: planted users and items (latent vectors, popularity bias, categories), preference
  drift at a given step, new items arriving at a given step;
- `click_model`: the position-based click model and the ground-truth API (`GroundTruth`:
  expected clicks of any list, the oracle list) that tests and benchmarks compare against;
- `tenant`: loads the catalog, users and a warm-up history into the service through its API;
- `runner`: the request loop (recommend → draw clicks → post them with the request id) and its
  summary.

Time is the simulation step: request number `t` (0-based) of a run.
"""
