"""train.posttrain: the splits become one table of inference rows, even when a split is empty (a
small dataset's val split: CI's tune-training run failed on `uri: null` vs `uri: string`)."""
from __future__ import annotations

import pyarrow as pa

from alle_dist.train.posttrain import _inference_rows


def _split(paths, labels):
    return pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.string())})


def test_an_empty_split_concatenates_with_the_others():
    splits = {"train": _split(["Benign/a.jpg", "Pro/b.jpg"], ["Benign", "Pro"]), "val": _split([], []),
              "test": _split(["Pro/c.jpg"], ["Pro"])}
    rows = _inference_rows(splits, "/data/smears", ["Benign", "Pro"])
    assert rows.schema.field("uri").type == pa.string() and rows.num_rows == 3
    assert rows.column("split").to_pylist() == ["train", "train", "test"]
    assert rows.column("label").to_pylist() == [0, 1, 1]
    assert rows.column("uri").to_pylist()[2] == "file:///data/smears/Pro/c.jpg"
