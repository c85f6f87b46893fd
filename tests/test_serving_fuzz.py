"""A bounded schema-driven fuzz of the REST app (schemathesis over its own OpenAPI): no 5xx, ever."""

from __future__ import annotations

import pytest
import schemathesis
import yaml
from conftest import REPO
from hypothesis import HealthCheck, Phase, given, settings

from perfkit import config
from perfkit.models import Embedder
from perfkit.serving.app import create_app


@pytest.fixture(scope="module")
def api(tiny, tiny_model_dir, tmp_path_factory):
    _, _, engine = tiny
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["path"] = str(tiny_model_dir)
    raw["hardware"] = {"device": "cpu", "threads": 1}
    # Short generations keep each case cheap; rate limiting off so the cases reach validation and the model.
    raw["serving"] = {**raw["serving"], "warmup": False, "max_new_tokens_limit": 4, "rate_limit": {"enabled": False}}
    root = tmp_path_factory.mktemp("fuzz")
    (root / "data").mkdir()
    (root / "data" / "corpus").symlink_to(REPO / "data" / "corpus")  # the payload routes serve corpus text
    cfg = config.parse(raw, root=root, stage="serve")
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(cfg, engine, Embedder.load())), cfg


def test_no_request_gets_a_server_error(api):
    """Every operation, up to 70 generated cases each (a few hundred in all), derandomized so a failure replays.

    Generated bodies name the served model, so cases get past the 404 and reach validation and the model.
    """
    api, cfg = api
    served = {"/v1/embeddings": cfg.model.embedding_name}
    statuses: list[int] = []
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/v1/payload"):
            continue  # the transport stage's payload routes build up to 256 MiB per request: fuzzed apart by their owner

        @given(case=operation.as_strategy())
        @settings(
            max_examples=70,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
                case.body["model"] = served.get(case.path, cfg.model.name)
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
            if response.status_code >= 400 and case.path.startswith("/v1/"):
                assert set(response.json()["error"]) >= {"message", "type", "code"}

        fuzz()
    assert len(statuses) >= 200 and 200 in statuses and 400 in statuses  # the fuzz reached the model and the validators
