"""runtime: secrets are hidden from Ray Tune while it starts trials, and restored afterwards."""
import os
from alle_dist.runtime import SECRET_ENV_VARS, secrets_hidden_from_ray



def test_secrets_hidden_inside_and_restored_after(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t0k3n")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with secrets_hidden_from_ray():
        assert not any(k in os.environ for k in SECRET_ENV_VARS)
        assert os.environ["AWS_REGION"] == "eu-west-1"      # not a secret: stays
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and os.environ["AWS_SESSION_TOKEN"] == "t0k3n"


def test_secrets_restored_when_the_body_raises(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    try:
        with secrets_hidden_from_ray():
            raise RuntimeError("trial failed")
    except RuntimeError:
        pass
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"


def test_debug_logging_prints_no_credentials(monkeypatch, capsys):
    """--log-level DEBUG: botocore's signed-request lines stay off, and a credential that still
    reaches a log line (a library message, an exception text) is masked."""
    import logging

    from alle_dist import runtime

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/secret+0123456789")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE0123456789")
    runtime.configure_logging("DEBUG")
    logging.getLogger("botocore.auth").debug("StringToSign: Credential=AKIAFAKE0123456789/…")
    logging.getLogger("alle_dist").debug("retrying with key %s", "AKIAFAKE0123456789")
    logging.getLogger("some.lib").warning("bad secret fake/secret+0123456789")
    err = capsys.readouterr().err
    assert "StringToSign" not in err and "AKIAFAKE" not in err and "fake/secret" not in err, err
    assert "retrying with key ***" in err and "bad secret ***" in err
