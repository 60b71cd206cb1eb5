"""One line per epoch on the driver while Ray Train runs: epoch k/N, losses, accuracy, speed, ETA.

Ray Train V2 calls a `ray.train.UserCallback` on its controller actor after every round of
`ray.train.report`; `EpochLines` formats the line there and sends it to the driver through a
`progress.Relay` (the driver is blocked in `fit()`), with the epoch's metrics for MLflow (alle_dist.tracking).
"""
from __future__ import annotations

from ray.train import UserCallback

from ..progress import epoch_line


class EpochLines(UserCallback):
    """Runs on the Train controller: rank 0's metrics of each epoch → one line on the driver."""

    def __init__(self, queue, backbone: str, epochs: int):
        self.queue, self.backbone, self.epochs = queue, backbone, epochs
        self.seconds: list[float] = []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics or "epoch" not in metrics[0]:
            return
        m = metrics[0]
        self.seconds.append(float(m.get("seconds", 0.0)))
        try:
            # The first epoch of a run includes Ray Data's start-up: leave it out of the ETA once possible.
            steady = self.seconds[1:] or self.seconds
            line = epoch_line(self.backbone, m, self.epochs, sum(steady) / len(steady))
            numbers = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.queue.put_nowait((line, numbers))   # the driver logs the line, its metrics go to MLflow (opt-in)
        except Exception:  # noqa: BLE001 - a full or gone queue must never fail the training run
            pass
