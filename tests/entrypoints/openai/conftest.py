"""The ``server`` fixture: one live server per test module."""

import pytest
from server_utils import RemoteServer


@pytest.fixture(scope="module")
def server(request, tiny_model, tmp_path_factory):
    """A module's server: the tiny full-vocabulary Llama, with the module's
    SERVER_ARGS / SERVER_ENV."""
    args = getattr(request.module, "SERVER_ARGS", [])
    env = getattr(request.module, "SERVER_ENV", {})
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = RemoteServer(tiny_model("llama_full_vocab"), args, str(log), env)
    yield srv
    status = srv.stop()
    assert status == 0, srv.output()[-4000:]
