"""``python -m course_lib.deploy.serve``: bad ports are one clear line and a non-zero exit (no OverflowError)."""

import pytest

from course_lib.deploy import serve


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "0"], ["--query", "上海市", "--port", "-1"]])
def test_a_port_outside_1_to_65535_is_one_line(args, capsys):
    assert serve.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port must be a TCP port between 1 and 65535" in err, err


def test_serve_still_offers_the_server_and_client_names_notebook_01_uses():
    """The module was split (server, client, sweep + CLI); notebook 01 and users keep writing ``serve.NAME``."""
    from course_lib.deploy import client, server

    for name in serve.__all__:
        assert hasattr(serve, name), name
    assert serve.TritonServer is server.TritonServer and serve.load_test is client.load_test
    assert serve.make_infer_fn.__module__ == "course_lib.deploy.server"
