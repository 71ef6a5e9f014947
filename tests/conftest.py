import functools
import http.server
import socket
import threading
from pathlib import Path

import datasets
import pytest

import synmirror
from factory import write_release

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed"


def free_port() -> int:
    """A TCP port nothing listens on now, for a process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(folder) -> base URL of a real HTTP server on 127.0.0.1 serving that folder."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def release(tmp_path):
    """release(**options) -> a Release written under tmp_path/data (see factory.write_release)."""
    return functools.partial(write_release, tmp_path / "data")


@pytest.fixture
def build(tmp_path):
    """build(config, **config_kwargs) -> the prepared `train` split, through the builder class itself."""

    def prepare(config: str, **kwargs):
        builder = synmirror.SynMirror(config_name=config, cache_dir=str(tmp_path / "cache"), **kwargs)
        try:
            builder.download_and_prepare()
        except datasets.exceptions.DatasetGenerationError as error:
            # datasets wraps what the examples generator raised; the user sees ours as its cause
            if isinstance(error.__cause__, synmirror.SynMirrorError):
                raise error.__cause__
            raise
        return builder.as_dataset(split="train")

    return prepare
