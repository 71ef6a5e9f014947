"""The `synmirror` command as a newcomer runs it."""

import os
import shutil
import subprocess
import sys


import synmirror


def synmirror_command(*args, env=None, cwd=None):
    command = shutil.which("synmirror") or None
    argv = [command, *args] if command else [sys.executable, "-m", "synmirror", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, cwd=cwd)


def test_main_job_without_network_fails_fast_and_says_what_to_do(tmp_path):
    # Every route out goes to a closed port on loopback, as on a machine without network.
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
           "HF_HOME": str(tmp_path / "hf")}
    result = synmirror_command("download", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                               env=env, cwd=tmp_path)  # within 30 s, or TimeoutExpired
    assert result.returncode == 2, result.stderr
    assert "synmirror: error: could not download" in result.stderr
    for source in synmirror.SOURCES.values():
        assert source.drive_url in result.stderr
    assert "--data-dir" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "README.md").exists()


def test_unknown_config_is_refused(tmp_path):
    result = synmirror_command("download", "nats", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "unknown config 'nats'" in result.stderr


def test_bad_url_option(tmp_path):
    result = synmirror_command("download", "--url", "sdxl", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--url takes NAME=URL" in result.stderr
