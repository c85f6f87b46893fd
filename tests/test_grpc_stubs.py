"""The committed gRPC stubs are exactly what grpcio-tools generates from the committed .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

PROTO = "perfkit/serving/perfkit.proto"


def test_regenerated_stubs_match_the_committed_ones(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "src",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"src/{PROTO}",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in ("perfkit_pb2.py", "perfkit_pb2_grpc.py"):
        fresh = (tmp_path / "perfkit" / "serving" / name).read_text()
        committed = (REPO / "src" / "perfkit" / "serving" / name).read_text()
        assert fresh == committed, f"{name} is stale: regenerate it from {PROTO} (command in the .proto's header)"


def test_stubs_import_and_name_every_rpc() -> None:
    from perfkit.serving import perfkit_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Perfkit"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "Generate": (False, False),
        "GenerateStream": (False, True),
        "Embed": (False, False),
        "GetPayload": (False, False),
        "StreamPayload": (False, True),
        "Echo": (False, False),
        "Health": (False, False),
    }
