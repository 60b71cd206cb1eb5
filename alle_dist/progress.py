"""Progress of long work on the driver, for every stage: a bar on a terminal, one line per interval
in a log (a file, `ray job logs`, CI), never both and never Ray's own bars (runtime turns them off).

    with Progress("prepare: hashing", total=len(items), unit="img") as bar:
        for batch in ds.iter_batches(...):
            bar.update(len(batch))

`iter_rows(ds, ...)` does exactly that for a Ray Data dataset whose rows the driver collects. The
lines go to the `alle_dist.progress` logger at INFO, so `--log-level WARNING` silences them.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("alle_dist.progress")


def rate_eta(done: int, total: int | None, seconds: float, unit: str) -> str:
    """'37 img/s, ETA 12 s' (no ETA without a total or before anything is done)."""
    rate = done / seconds if seconds > 0 else 0.0
    text = f"{rate:.1f} {unit}/s" if rate < 10 else f"{rate:.0f} {unit}/s"
    if total and done and rate > 0 and done < total:
        text += f", ETA {duration((total - done) / rate)}"
    return text


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s" if s < 5400 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def epoch_line(backbone: str, m: dict, epochs: int, seconds_per_epoch: float) -> str:
    """Training's line per epoch (train.epoch_log): epoch k/N, losses, accuracy, speed, ETA."""
    left = epochs - int(m["epoch"])
    eta = f", ETA {duration(left * seconds_per_epoch)}" if left > 0 else ""
    return (f"{backbone}: epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.4f}  val loss "
            f"{m['val_loss']:.4f}  val acc {m['val_acc']:.3f}  {m['train_images_per_s']:.0f} img/s{eta}")


class Progress:
    """A counter shown as a tqdm bar on a terminal, else as a log line every `interval_s`."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "img", interval_s: float = 10.0,
                 stream=None):
        self.desc, self.total, self.unit, self.interval_s = desc, total, unit, interval_s
        self.done, self._t0, self.postfix, self._logged = 0, time.monotonic(), "", -1
        self._last = self._t0
        stream = stream or sys.stderr
        enabled = log.isEnabledFor(logging.INFO)
        self._bar = None
        if enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True)
        self._lines = enabled and self._bar is None

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """Count n more; `postfix` (e.g. "best 0.97") replaces the text shown after the count."""
        self.done += n
        self.postfix = self.postfix if postfix is None else postfix
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        elif self._lines and time.monotonic() - self._last >= self.interval_s:
            self._last, self._logged = time.monotonic(), self.done
            log.info("%s", self.line())

    def line(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        return (f"{self.desc}: {self.done}{of} {self.unit}{pct}, "
                f"{rate_eta(self.done, self.total, self.elapsed(), self.unit)}{post}")

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def close(self) -> None:
        """Ends the bar (a terminal) or logs the final count (a log)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            self._lines = False
            if self._logged != self.done:
                log.info("%s", self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_rows(ds, desc: str, total: int | None, unit: str = "img", batch_size: int | None = 64) -> list[dict]:
    """Every row of a Ray Data dataset on the driver (as `take_all` gives), counted as it arrives."""
    rows: list[dict] = []
    with Progress(desc, total, unit) as bar:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            rows.extend(batch.to_pylist())
            bar.update(batch.num_rows)
    return rows


class Relay:
    """Lines that a Ray process (e.g. Ray Train's controller actor, which runs its callbacks) sends
    to the driver while the driver blocks in `fit()`: `relay.queue.put_nowait(line)` there, logged
    here by a thread. Ray's own forwarding of worker output is off by default (runtime), so this
    is how a line from inside Ray reaches the user."""

    def __init__(self, on_metrics=None):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.on_metrics = on_metrics   # an item `(line, metrics)` also hands its metrics to this (e.g. MLflow)
        self._stop = None
        self._thread = None

    def __enter__(self) -> "Relay":
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="alle-dist-relay", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                item = self.queue.get(timeout=0.5)
                if isinstance(item, tuple):
                    item, metrics = item
                    self._hand_on(metrics)
                log.info("%s", item)
            except Empty:
                if self._stop.is_set():
                    return
            except Exception:  # noqa: BLE001 - the queue actor is gone (shutdown): nothing more to show
                return

    def _hand_on(self, metrics: dict) -> None:
        if self.on_metrics is None:
            return
        try:
            self.on_metrics(metrics)
        except Exception as exc:  # noqa: BLE001 - a tracking server gone mid-run must not stop the work
            log.warning("metrics not recorded (%s); the work goes on", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self.on_metrics = None

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.queue.shutdown()
