"""The evaluation wing: what a trained run is worth, and the model in a form a service loads.

- `scores`: multi-label metrics in NumPy and per-label threshold tuning.
- `loading`: a run's best model, its thresholds, predictions over a split.
- `evaluate`: compute the evaluation, then write metrics.json, thresholds.json, the report.
- `report`: the console table, report.md and per_label.csv (pure text).
- `plots`: the PNG figures (matplotlib, Agg).
- `export`: SavedModel export and the predictors behind `predict`.

May import: the foundation, storage, data and training.
"""
