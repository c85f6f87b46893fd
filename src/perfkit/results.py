"""A stage's result as data: saved as `result.json` beside its metrics.json and CSVs, and loaded back as the
same object a run returns, so a notebook, the site and MLflow can show a committed result without measuring.

The file is the result's own dataclass tree, each object tagged with its class (`module:QualName`),
tuples, non-string-keyed dicts, DataFrames (pandas' `table` orient, which keeps the dtypes), numpy
values, paths and pydantic sections tagged too, so `load` rebuilds exactly the types the stage built:
everything its rendering (table, figures, conclusion, claims) reads is there. Classes are imported
only from perfkit and from modules that declare a registered stage. `SCHEMA` is the file's format
version: a file of another version is refused, naming both (no older format exists yet).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from perfkit.errors import PerfkitError

SCHEMA = 1
RESULT_FILE = "result.json"


class ResultFileError(PerfkitError, ValueError):
    """A result.json that is missing, of another schema version, or names a class perfkit will not import."""


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode(value: Any) -> Any:
    """`value` as JSON-ready data with type tags (see the module doc)."""
    import numpy as np
    import pandas as pd
    from pydantic import BaseModel

    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"__dataclass__": _name(type(value)), "fields": fields}
    if isinstance(value, BaseModel):
        return {"__model__": _name(type(value)), "data": value.model_dump(mode="json")}
    if isinstance(value, pd.DataFrame):
        return {"__frame__": json.loads(value.to_json(orient="table", index=False, double_precision=15))}
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, np.ndarray):
        return {"__array__": encode(value.tolist()), "dtype": str(value.dtype)}
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"results: cannot save a {type(value).__module__}.{type(value).__qualname__}")


def _allowed(module: str) -> bool:
    from perfkit import stages

    if module == "perfkit" or module.startswith("perfkit."):
        return True
    return any(spec.run.partition(":")[0] == module for spec in stages.registry().values())


def _class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not _allowed(module):
        raise ResultFileError(
            f"result.json names {name!r}: classes load only from perfkit and registered stage modules"
        )
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def decode(data: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dataclass__" in data:
        return _class(data["__dataclass__"])(**{k: decode(v) for k, v in data["fields"].items()})
    if "__model__" in data:
        return _class(data["__model__"]).model_validate(data["data"])
    if "__frame__" in data:
        from io import StringIO

        import pandas as pd

        return pd.read_json(StringIO(json.dumps(data["__frame__"])), orient="table", precise_float=True)
    if "__array__" in data:
        import numpy as np

        return np.array(decode(data["__array__"]), dtype=data["dtype"])
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__items__" in data:
        return {decode(k): decode(v) for k, v in data["__items__"]}
    if "__float__" in data:
        return float(data["__float__"])
    if "__path__" in data:
        return Path(data["__path__"])
    return {k: decode(v) for k, v in data.items()}


def save(result: Any, out_dir: Path) -> Path:
    """Write `out_dir/result.json` atomically: the schema version, the stage, and the encoded result."""
    body = {"schema": SCHEMA, "stage": result.spec.name, "result": encode(result)}
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".result.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, separators=(",", ":"))
        f.write("\n")
    path = out_dir / RESULT_FILE
    os.replace(tmp, path)
    return path


def load(out_dir: Path) -> Any:
    """The result a stage saved in `out_dir` (experiments/<stage>/), as the object its run returned."""
    path = out_dir / RESULT_FILE
    if not path.is_file():
        raise ResultFileError(
            f"{path}: no saved result; the stage writes it when it runs (`perfkit stage {out_dir.name}`)"
        )
    body = json.loads(path.read_text())
    if body.get("schema") != SCHEMA:
        raise ResultFileError(
            f"{path}: schema {body.get('schema')!r}; this perfkit reads schema {SCHEMA}: rerun the stage"
        )
    return decode(body["result"])
