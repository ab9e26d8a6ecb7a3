"""No test reaches the network (conftest.py's guard): in this process, in child processes."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_torch_hub_is_empty_and_its_downloads_fail(offline):
    assert torch.hub.get_dir() == str(offline) and not any(offline.iterdir())
    with pytest.raises(OSError, match="network disabled in tests"):
        torch.hub.download_url_to_file("https://download.pytorch.org/models/x.pth", "x.pth")


def test_sockets_connect_only_to_this_machine():
    with pytest.raises(OSError, match="network disabled in tests: connection to 192.0.2.1"):
        socket.create_connection(("192.0.2.1", 80), timeout=30)  # TEST-NET-1: unroutable
    with socket.socket() as server:  # this machine is reachable
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        socket.create_connection(server.getsockname(), timeout=30).close()


def test_child_processes_get_an_empty_torch_home_and_no_route_out():
    assert not any(Path(os.environ["TORCH_HOME"]).iterdir())
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    child = subprocess.run(
        [sys.executable, "-c", "import urllib.request; "
         "urllib.request.urlopen('http://192.0.2.1/weights.pth', timeout=30)"],
        capture_output=True, text=True, timeout=120)
    assert child.returncode != 0
    assert "Connection refused" in child.stderr  # the proxy that leads nowhere, not a timeout
