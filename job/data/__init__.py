"""The data wing: from images and labels to the batches a model trains on.

- `labels`: class names <-> multi-hot, label statistics, co-occurrence.
- `synthetic`: procedural multi-label scenes for the demo and tests.
- `shards`: the on-storage format: TFRecord/Parquet shards and the `dataset.json` manifest.
- `splits`: the seeded train/val/test split and writing a whole data set (synth and prepare).
- `prepare`: a folder of images + a labels CSV -> a data set.
- `validate`: the pre-flight check of a data set.
- `pipeline`: tf.data: decode, resize, augment, batch, prefetch.

May import: the foundation (errors, config, progress) and the storage wing.
"""
