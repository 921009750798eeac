"""The batch layer: PySpark jobs over the event log, run as `recsys batch <job>` or `spark-submit`.

Jobs, in chain order (`recsys batch all`): compact → attribution → sequences → item_graph →
batch_features → ranking_samples. Each is `extract → transform(df, params) → load` in `pipelines/spark/jobs/<job>.py`
with a thin `main()` so `spark-submit pipelines/spark/jobs/<job>.py` runs it unchanged on a cluster
(the master then comes from spark-submit; paths come from settings, `RECSYS_BATCH__*`).

Outputs, under `settings.batch_uri` (`<state_dir>/batch` unless `batch.output_uri` is set):

- `events/`: the compacted master table, Parquet partitioned by `dt` (YYYY-MM-DD, UTC):
  event_id, user_id, item_id, type (strings), value double, ts timestamp (UTC), request_id,
  position long, page, experiment, arm, policy, propensity double, team, model_versions
  map<string, string> (the last four null in logs written before they existed), candidates
  list<string>, candidate_scores list<double>, candidate_count long (the first impression of a
  request sampled by `explore.log_candidates_share`; else null), ranks map<string, long> and
  ranker_propensities map<string, double> (an interleaved slot's, per team; else null). One row
  per `event_id`.
- `rejects/`: lines of the event log that failed validation: source_file (URI), line_number
  (1-based, long), reason, raw (the line as written). Blank lines are skipped, not rejected.
- `attributed_impressions/`: one row per impression, Parquet partitioned by `dt`: event_id,
  user_id, item_id, ts, request_id, position, page, policy, propensity, experiment, arm, team, ranks,
  ranker_propensities, and
  one 0/1 int column per attributed outcome type (add_to_cart, click, like, purchase): 1 when an
  outcome of that type is attributed to the impression by `feature_store.attribution`'s rule
  (window `attribution.window_s`). Ranker training data and the input of off-policy evaluation.
- `attribution_counts/`: dimension (item, item_position, position, policy_arm), key (ids joined by
  `attribution.join_key`; a missing position, policy or arm is `-`), bucket_ms long (the
  impression's event hour, epoch ms), measure (`impression` or an outcome type), value long: the
  shape of `attribution.CountRow`, non-zero counts only. `recsys batch check-attribution` compares
  them with the speed layer's counts in Redis.
- `sequences/`: user_id, session_id (string `<user_id>#<n>`, n from 0 in time order), item_ids
  list<string> (positive items, time-ordered, consecutive repeats collapsed), ts list<timestamp>
  (aligned with item_ids), start_ts, end_ts timestamp, length int. Sessions split by an inactivity
  gap of `batch.session_gap_minutes` measured over all of the user's events.
- `item_graph/`: src string, dst string, weight long (count of src→dst consecutive transitions in
  sessions; no self-loops, since sequences collapse repeats).
- `samples/`: ranking samples; schema in `pipelines/spark/jobs/ranking_samples.py`;
  `samples/_manifest.json` records the negative sampling ratio, split boundaries and counts.
- `features/`: the batch views (`<entity>/` Parquet) with the watermark they cover, also published
  to the feature store.

Scaling: every job is linear in the events. Per-user and per-item running features
(`point_in_time.py`) are windows over (key, hour bucket) plus a small table of per-bucket totals,
so a heavy user or item never puts its whole history in one window partition; joins never pair
a heavy key's rows with each other (unclicked impressions come from a running minimum, not a
range join). `benchmarks/batch_jobs.py` measures the chain at growing sizes.

A positive interaction is what `feature_store.definitions.POSITIVE` says (click, like, purchase,
add_to_cart, share, or a rating >= 3.5): the same rule the speed layer and the API apply.
"""
