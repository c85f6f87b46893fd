"""One stage's smoke path in this process, for `perfkit.gpu.check`: `python -m perfkit.gpu.stage_child STAGE`.

The stage's own `run(cfg)` through `perfkit.stages.notebook.run` (provenance, tables, metrics.json under
`PERFKIT_ROOT`), without a notebook and, with `PERFKIT_TRACKING=off`, without MLflow: a GPU machine may
have neither. Prints the stage's verdict as one JSON line; an error ends it non-zero, its last stderr
line naming the exception.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings


def main(argv: list[str]) -> int:
    from perfkit import config
    from perfkit.stages import notebook

    logging.captureWarnings(True)
    warnings.simplefilter("ignore")
    (stage,) = argv
    result = notebook.run(config.load(stage, smoke=True))
    print(json.dumps({"stage": stage, "verdict": result.verdict()}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:
        import traceback

        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}".splitlines()[0][:500], file=sys.stderr)
        sys.exit(1)
