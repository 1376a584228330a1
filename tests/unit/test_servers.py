"""servers.wait_serving: a server that answers on the port is ours only when our process holds the listener,
so two checkouts starting at the same moment never take each other's server for their own."""
import socket
import subprocess
import sys

import pytest

from partnercerts import servers
from tests.conftest import free_port

SERVE = "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(60)"


def _answers(port):
    def ready():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return "answered"
        except OSError:
            return None
    return ready


def test_our_process_serving_the_port_is_ready():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)])
    try:
        assert servers.wait_serving(proc, port, _answers(port), 30) == "answered"
        assert servers.listens(proc.pid, port)
    finally:
        proc.kill()
        proc.wait()


def test_another_server_answering_on_the_port_is_not_ours():
    port = free_port()
    other = socket.create_server(("127.0.0.1", port))  # the other checkout's server, which won the port
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], stderr=subprocess.DEVNULL)
    try:
        assert servers.wait_serving(proc, port, _answers(port), 30) is None  # ours lost the port and exited
        assert proc.returncode != 0 and not servers.listens(proc.pid, port)
    finally:
        other.close()
        proc.kill()
        proc.wait()


def test_a_process_that_neither_serves_nor_exits_times_out():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError):
            servers.wait_serving(proc, port, _answers(port), 0.5)
    finally:
        proc.kill()
        proc.wait()
