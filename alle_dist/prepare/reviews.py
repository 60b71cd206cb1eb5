"""`prepare --reviews DST`: images a haematologist reviewed into one of the classes become labelled
catalogue items (their URI as the manifest path, `source = review`, reviewer and batch recorded),
read from DST's reviews table (tables.SideDir.reviews; `alle-dist review import` writes it). They
then go through the same hashing, duplicate and near-duplicate grouping and split as SRC's images.
"""
from __future__ import annotations

from ..errors import StorageError
from ..io import storage
from ..tables import SideDir, read_current
from .catalog import review_items


def reviewed_items(dst: str, classes: list[str]) -> tuple[list[dict], dict[str, int], int]:
    """(catalogue items of the reviewed images, {label: images left out}, the reviews table's version)."""
    where = SideDir(storage.absolute(dst)).reviews
    found = read_current(where)
    if found is None:
        raise StorageError(f"{dst}: has no reviews yet ({where}); record decisions first with "
                           f"`alle-dist review import --table {dst} --decisions FILE`")
    reviews, version = found
    items, left_out = review_items(reviews, classes)
    return items, left_out, version


def added_line(dst: str, n: int, left_out: dict[str, int], version: int) -> str:
    """What --reviews added, for the terminal."""
    out = ", ".join(f"{k} {v}" for k, v in sorted(left_out.items()))
    return (f"reviews: {n} reviewed image(s) from {dst} (reviews table version {version}) added as labelled "
            f"images{f'; not a class of SRC, left out: {out}' if out else ''}")


def stale_models_line(run_root: str, folders: list[str], kept: str) -> str:
    """The one line after a manifest with reviews replaced one that models were trained on."""
    members = ",".join(b for b in folders if "__control-" not in b)
    return (f"prepare: the manifest changed (the previous one is kept as {kept}); the models in {run_root} were "
            f"trained on the previous one and are refused until retrained: `alle-dist train --run-dir {run_root} "
            f"--backbone {members} --retrain`, then `alle-dist tune` and `alle-dist evaluate`")
