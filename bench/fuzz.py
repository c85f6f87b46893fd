"""Schema-driven fuzz of the reference REST server: schemathesis over its own OpenAPI document.

The server is started as a user would start it (`perfkit serve` through the launcher, rate limit
off so the cases reach validation and the model, `max_new_tokens_limit` small so each generation
is short). schemathesis reads `/openapi.json` and generates requests from it -- valid ones, since
the schema names the served models and the bounds the server enforces, and invalid ones at and
past those bounds -- for every operation, each case a real HTTP request with a timeout.

Passes when no case got a 5xx, none timed out, and chat, completions and embeddings each answered
200 to some generated request (the fuzz reached generation, not just the validators). The payload
routes build up to 16 MiB per request, so they get `--payload-cases` each rather than `--cases`;
an operation without parameters (`/health`, `/metrics`, ...) has one case to give. The defaults
come to just over 1,000 cases (about 25 minutes on 2 busy cores with the tiny test model:
`--set model.path=DIR`).

Prints one JSON object as its last line; exits 0 only when it passed. `--smoke` applies params.yaml's
smoke overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings

from perfkit import config
from perfkit.serving.launch import launch

CORE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=330, help="generated cases per operation (payload routes aside)")
    parser.add_argument("--payload-cases", type=int, default=12, help="generated cases per payload operation")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one case may take before it counts as timed out")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="serving.max_new_tokens_limit of the fuzzed server")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="further server params overrides")
    parser.add_argument("--smoke", action="store_true", help="apply params.yaml's smoke overrides")
    args = parser.parse_args(argv)
    cfg = config.load("serve", smoke=args.smoke)
    overrides: dict[str, object] = {
        "serving.rate_limit.enabled": False,
        "serving.max_new_tokens_limit": args.max_new_tokens,
        "serving.scheduler": "continuous",
        "serving.payload_routes": True,  # the transport stage's routes, where the stalling request was found
    }
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)  # as the server reads a --set value
    statuses: Counter[tuple[str, int]] = Counter()
    timeouts: list[str] = []
    failures: list[str] = []
    started = time.perf_counter()
    with launch(cfg, overrides=overrides, timeout_s=300) as server:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
        session = requests.Session()
        for result in schema.get_all_operations():
            operation = result.ok()
            examples = args.payload_cases if operation.path.startswith("/v1/payload") else args.cases

            @given(case=operation.as_strategy())
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case) -> None:
                label = f"{case.method} {case.path}"
                try:
                    response = case.call(base_url=server.base_url, session=session, timeout=args.timeout)
                except requests.Timeout:
                    timeouts.append(label)
                    return
                statuses[(case.path, response.status_code)] += 1
                if response.status_code >= 500:
                    failures.append(f"{label} -> {response.status_code}: {response.text[:200]}")

            fuzz()
    by_route: dict[str, dict[str, int]] = {}
    for (path, code), n in sorted(statuses.items()):
        by_route.setdefault(path, {})[str(code)] = n
    cases = sum(statuses.values()) + len(timeouts)
    reached = {path: by_route.get(path, {}).get("200", 0) for path in CORE}
    passed = cases >= 1000 and not failures and not timeouts and all(reached.values())
    result = {
        "cases": cases,
        "server_errors": len(failures),
        "timeouts": len(timeouts),
        "core_routes_answered_200": reached,
        "statuses_by_route": by_route,
        "first_failures": failures[:5] + timeouts[:5],
        "wall_s": round(time.perf_counter() - started, 1),
        "passed": passed,
    }
    print(json.dumps(result))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
