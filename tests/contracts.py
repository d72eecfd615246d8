"""The output contracts users rely on, stated once for the tests (independently of the code
that produces them, so a change to the product's own constants cannot silently pass)."""

SPLITS = ("train", "val", "test")

# metrics.json: the keys of each split's object (README "Evaluation and analysis").
METRICS_SPLIT_KEYS = frozenset(
    {
        "loss",
        "binary_accuracy",
        "cosine_similarity",
        "micro_f1",
        "macro_f1",
        "mean_average_precision",
        "hamming_loss",
        "subset_accuracy",
        "per_label",
    }
)
# ... and of each label's object under "per_label".
PER_LABEL_KEYS = frozenset(
    {"support", "precision", "recall", "f1", "average_precision", "binary_accuracy", "threshold"}
)
# per_label.csv: its header (README "Evaluation and analysis").
PER_LABEL_CSV_COLUMNS = frozenset(
    {
        "split",
        "label",
        "support",
        "threshold",
        "precision_at_0.5",
        "recall_at_0.5",
        "f1_at_0.5",
        "binary_accuracy_at_0.5",
        "precision_tuned",
        "recall_tuned",
        "f1_tuned",
        "binary_accuracy_tuned",
        "average_precision",
    }
)
