"""The embedded Ray head's command line and environment, built without starting it: loopback
only (node address, dashboard host, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for the head and its
drivers), every port picked free and none twice, and a Ray Client server only when asked for.
The head itself, running, is tested in ``tests/e2e/test_embedded_ray.py``.
"""

from __future__ import annotations

from service.cluster.embedded_ray import CLIENT_PORT_FLAG, LOCAL_ONLY_VAR, PORT_VARS, RayHead


def test_head_command_loopback_only_and_ray_client_only_when_asked(tmp_path):
    head = RayHead(tmp_path)
    head.temp_dir = tmp_path
    command, env = head.command(), head.head_env()
    assert "--node-ip-address=127.0.0.1" in command and "--dashboard-host=127.0.0.1" in command
    assert not any(arg.startswith(CLIENT_PORT_FLAG) for arg in command)
    assert head.client_address is None
    assert env[LOCAL_ONLY_VAR] == "0" and head.env()[LOCAL_ONLY_VAR] == "0"  # drivers too
    assert {env[name] for name in PORT_VARS} == {str(port) for port in head.port_vars.values()}

    with_client = RayHead(tmp_path, ray_client=True)
    with_client.temp_dir = tmp_path
    port = with_client.ports[CLIENT_PORT_FLAG]
    assert f"{CLIENT_PORT_FLAG}={port}" in with_client.command()
    assert with_client.client_address == f"ray://127.0.0.1:{port}"
    ports = [*with_client.ports.values(), *with_client.port_vars.values()]
    assert len(set(ports)) == len(ports), "every port picked free, none twice"
