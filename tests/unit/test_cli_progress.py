"""alle_dist.progress: one line per interval in a log, a final count, never a bar on a pipe."""
from __future__ import annotations

import io
import logging

from alle_dist import progress


def test_log_lines_and_final_count(caplog):
    caplog.set_level(logging.INFO, logger="alle_dist.progress")
    stream = io.StringIO()   # not a terminal: lines, not a bar
    with progress.Progress("segment", total=10, interval_s=0, stream=stream) as bar:
        for _ in range(4):
            bar.update(1)
        bar.update(6, postfix="best 0.9")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("segment: 1/10 img (10%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("segment: 10/10 img (100%), ") and lines[-1].endswith(", best 0.9")
    assert "ETA" not in lines[-1] and stream.getvalue() == ""
    assert len(lines) == 5   # one per update (interval 0), the final count not repeated by close()


def test_silent_when_the_level_is_warning(caplog):
    caplog.set_level(logging.WARNING, logger="alle_dist.progress")
    with progress.Progress("x", total=3, interval_s=0, stream=io.StringIO()) as bar:
        bar.update(3)
    assert not caplog.records


def test_durations_and_eta():
    assert progress.duration(42) == "42 s" and progress.duration(125) == "2 min 05 s"
    assert progress.duration(7300) == "2 h 01 min"
    assert progress.rate_eta(50, 100, 10.0, "img") == "5.0 img/s, ETA 10 s"
    assert progress.rate_eta(0, 100, 10.0, "img") == "0.0 img/s"


def test_epoch_line():
    m = {"epoch": 3, "train_loss": 0.91234, "val_loss": 0.8, "val_acc": 0.733, "train_images_per_s": 412.4}
    assert progress.epoch_line("resnet50", m, 10, 30.0) == ("resnet50: epoch 3/10  train loss 0.9123  val loss 0.8000  "
                                                    "val acc 0.733  412 img/s, ETA 3 min 30 s")
    assert progress.epoch_line("resnet50", {**m, "epoch": 10}, 10, 30.0).endswith("412 img/s")


def test_ray_hint_to_disable_auth_is_dropped_other_warnings_kept(caplog):
    from alle_dist import runtime

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        runtime.configure_logging(None)
        token_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        with caplog.at_level(logging.WARNING):
            token_log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled "
                              "to opt out.")
            token_log.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        assert [r.getMessage()[:33] for r in caplog.records] == ["Token authentication is disabled "]
        assert logging.getLogger("alle_dist").level == logging.INFO and runtime.ray_is_quiet()
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
