"""The tracking store as a place: a server or a database, reachable or not, and one error."""

from __future__ import annotations

import pytest

from harness.errors import TrackingError
from harness.tracking import check_reachable, is_server
from harness.tracking.store import call, port_in_use


@pytest.mark.parametrize("uri, server", [
    ("http://127.0.0.1:5000", True), ("https://mlflow.example", True),
    ("sqlite:///mlruns/mlflow.db", False), ("postgresql://u@h/db", False), (None, False),
    ("file:///tmp/x", False)])
def test_a_server_is_an_http_address(uri: str | None, server: bool) -> None:
    assert is_server(uri) is server


def test_an_unreachable_server_is_one_clear_error_with_the_password_masked() -> None:
    with pytest.raises(TrackingError, match=r"cannot reach the MLflow tracking server at "
                                            r"http://user:\*\*\*@127\.0\.0\.1:9"):
        check_reachable("http://user:secret@127.0.0.1:9", timeout_s=2)


def test_a_failing_call_becomes_a_tracking_error() -> None:
    def broken() -> None:
        raise ConnectionError("refused\nmore detail")

    with pytest.raises(TrackingError, match=r"the MLflow tracking store sqlite:///x failed: "
                                            r"refused$"):
        call("sqlite:///x", broken)


def test_a_port_in_use_is_seen() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use("127.0.0.1", s.getsockname()[1])
