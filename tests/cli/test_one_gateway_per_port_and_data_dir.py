"""One gateway per port and per data_dir: a second one refuses to start, the first goes on.

A second gateway used to start beside the first: grpc binds with ``SO_REUSEPORT`` unless told
otherwise, so the kernel split new gRPC connections between the two, and a shared data_dir meant
a shared journal and shared WhatsApp session stores (one linked device, two connections). Now
the second exits 2 within seconds with one line on stderr that names the conflict and what to
change, and the first still answers.

The gateways are real ``privacy-gateway serve`` processes (tests/helpers/processes.py), on
127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from service import data_dir
from service.grpc.server import bind_server
from service.http.server import HttpServer
from service.listen import ListenError
from tests.helpers.harness import Harness
from tests.helpers.one_gateway import First, env_for, serve_args
from tests.helpers.processes import CLI, TIMEOUT, held_ports, port_is_free, started_gateways

#: How soon the second gateway must have given up: it fails before it serves anything.
FAILS_WITHIN = 10.0


def second_gateway(args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    """Runs the second ``serve`` to its end, which must come within ``FAILS_WITHIN``."""
    began = time.monotonic()
    result = subprocess.run(
        [*CLI, "serve", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env_for(data),
        check=False,
    )
    assert time.monotonic() - began < FAILS_WITHIN, result.stderr
    return result


def assert_refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2, nothing on stdout (it never said it listens), and exactly ``line`` on stderr."""
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"{line}\n")


# -- the second gateway, as a process ------------------------------------------------------------


def test_a_second_gateway_on_the_same_grpc_port_exits_2_naming_the_port(
    first: First, tmp_path: Path
) -> None:
    address = first.gateway.address

    result = second_gateway(serve_args(listen=address), tmp_path / "second-data")

    assert_refused(
        result,
        f"privacy-gateway: gRPC port {address} is already in use (another gateway?); "
        "choose another --listen",
    )
    first.assert_still_serves()


def test_a_second_gateway_on_the_same_rest_port_exits_2_naming_the_port(
    first: First, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{first.rest_port}"

    result = second_gateway(serve_args(http_listen=address), tmp_path / "second-data")

    assert_refused(
        result,
        f"privacy-gateway: REST port {address} is already in use (another gateway?); "
        "choose another --http-listen",
    )
    first.assert_still_serves()


def test_a_second_gateway_on_the_same_data_dir_exits_2_naming_it_and_the_holder(
    first: First,
) -> None:
    result = second_gateway(serve_args(), first.data)

    pid = first.gateway.process.pid
    assert_refused(
        result,
        f"privacy-gateway: data_dir {first.data.resolve()} is in use by another gateway "
        f"(pid {pid}); give each gateway its own data_dir",
    )
    assert (first.data / data_dir.LOCK_FILE).read_text() == f"{pid}\n"
    first.assert_still_serves()


def test_the_data_dir_is_free_again_once_its_gateway_has_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with started_gateways(tmp_path) as start:
        start(*serve_args(), env=env_for(data)).close()
        again = start(*serve_args(), env=env_for(data))

        assert (data / data_dir.LOCK_FILE).read_text() == f"{again.process.pid}\n"


@pytest.mark.parametrize("where", ["a file in its place", "a file in its path"])
def test_an_unusable_data_dir_exits_2_naming_it_before_any_port_is_bound(
    tmp_path: Path, where: str
) -> None:
    """A data_dir that cannot be made (root may write anywhere, but not make a directory where a
    file is): one line naming it, exit 2. Its ports are held meanwhile, so a gateway that bound
    either before judging data_dir would have said the port was in use instead."""
    (tmp_path / "a-file").write_text("not a directory\n")
    data = tmp_path / "a-file" if where == "a file in its place" else tmp_path / "a-file" / "data"

    with held_ports(2) as (grpc_port, rest_port):
        result = second_gateway(
            serve_args(listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{rest_port}"),
            data,
        )

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"privacy-gateway: data_dir {data.resolve()} cannot be used: ")
    assert lines[0].endswith("; check data_dir")
    assert "Traceback" not in result.stderr
    assert port_is_free(grpc_port)
    assert port_is_free(rest_port)
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


# -- the same, in one process -------------------------------------------------------------------


def test_the_data_dir_lock_refuses_a_second_holder_until_the_first_lets_go(
    tmp_path: Path,
) -> None:
    data = tmp_path / "not-yet-there"

    with data_dir.locked(data) as lock_file:
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(data_dir.DataDirInUse) as info, data_dir.locked(data):
            pass
        assert f"(pid {os.getpid()})" in str(info.value)

    with data_dir.locked(data):
        pass


def test_a_data_dir_that_cannot_be_made_is_a_data_dir_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    under_a_file = tmp_path / "a-file" / "data"

    with pytest.raises(data_dir.DataDirError) as info, data_dir.locked(under_a_file):
        pass

    assert str(info.value) == (
        f"data_dir {under_a_file.resolve()} cannot be used: Not a directory; check data_dir"
    )


async def test_a_busy_grpc_port_is_a_listen_error_and_grpc_writes_nothing_itself(
    gateway: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ListenError) as info:
        bind_server(gateway.gateway, gateway.address)

    assert str(info.value).startswith(f"gRPC port {gateway.address} is already in use")
    assert capfd.readouterr().err == "", "grpc's own bind failure report is held back"


async def test_a_busy_rest_port_is_a_listen_error(gateway: Harness) -> None:
    held = HttpServer(gateway.gateway)
    await held.start("127.0.0.1:0")
    try:
        with pytest.raises(ListenError) as info:
            await HttpServer(gateway.gateway).start(f"127.0.0.1:{held.port}")
    finally:
        await held.stop()

    assert str(info.value).startswith(f"REST port 127.0.0.1:{held.port} is already in use")
