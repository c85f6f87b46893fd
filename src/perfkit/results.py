"""A stage's result as data: saved as `result.json` beside its metrics.json and CSVs, and loaded back as the
same object a run returns, so a notebook, the site and MLflow can show a committed result without measuring.

The file is the result's own dataclass tree, each object tagged with its class (`module:QualName`);
tuples, non-string-keyed dicts, DataFrames (columns, dtypes and rows, floats at full precision),
numpy arrays, paths, non-finite floats and pydantic sections are tagged too, so `load` rebuilds the
types the stage built (numpy scalars come back as Python numbers): everything its rendering (table,
figures, conclusion) reads is there. Only dataclasses and pydantic models defined in perfkit
or in a registered stage's package are rebuilt: a file naming anything else is refused. `SCHEMA` is
the file's format version: schema 1 (2026-12-05) also held the stage's claim checks, which moved to
the report stage; `load` drops them. A file of any other version is refused, naming both.
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

SCHEMA = 2
RESULT_FILE = "result.json"


class ResultFileError(PerfkitError, ValueError):
    """A result.json that is missing, of another schema version, or names a class perfkit will not rebuild."""


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
        if any(not f.init for f in dataclasses.fields(value)):
            raise TypeError(f"results: {type(value).__qualname__} has a field outside __init__, which a load cannot rebuild")
        return {"__dataclass__": _name(type(value)), "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, BaseModel):
        return {"__model__": _name(type(value)), "data": value.model_dump(mode="json")}
    if isinstance(value, pd.DataFrame):
        return {
            "__frame__": {
                "columns": [str(c) for c in value.columns],
                "dtypes": [str(t) for t in value.dtypes],
                "rows": [encode(list(row)) for row in value.itertuples(index=False, name=None)],
            }
        }
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
    """perfkit's own modules, and a registered stage's run module or the package it lives in."""
    from perfkit import stages

    if module == "perfkit" or module.startswith("perfkit."):
        return True
    for spec in stages.registry().values():
        runner = spec.run.partition(":")[0]
        package = runner.rpartition(".")[0]
        if module == runner or (package and module.startswith(package + ".")):
            return True
    return False


def _class(name: str, kind: str) -> type:
    """The class a tag names, if it is a dataclass (`kind` "dataclass") or a pydantic model ("model") defined in an
    allowed module; refused otherwise, so that a result file can call nothing else."""
    from pydantic import BaseModel

    module, _, qualname = name.partition(":")
    what = {"dataclass": "dataclasses", "model": "pydantic models"}[kind]
    refused = ResultFileError(f"result.json names {name!r}: only {what} of perfkit or a registered stage are rebuilt")
    if not _allowed(module):
        raise refused
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if not isinstance(target, type):
            raise refused
    fits = dataclasses.is_dataclass(target) if kind == "dataclass" else issubclass(target, BaseModel)
    if not fits or target.__module__ != module:
        raise refused
    return target


def decode(data: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dataclass__" in data:
        return _class(data["__dataclass__"], "dataclass")(**{k: decode(v) for k, v in data["fields"].items()})
    if "__model__" in data:
        return _class(data["__model__"], "model").model_validate(data["data"])
    if "__frame__" in data:
        import pandas as pd

        f = data["__frame__"]
        if "schema" in f:  # the first files (2026-12-05) held pandas' `table` orient, 15 decimal places
            from io import StringIO

            return pd.read_json(StringIO(json.dumps(f)), orient="table", precise_float=True)
        frame = pd.DataFrame([decode(row) for row in f["rows"]], columns=f["columns"])
        return frame.astype(dict(zip(f["columns"], f["dtypes"], strict=True))) if len(frame) else frame
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
        raise ResultFileError(f"{path}: no saved result; the stage writes it when it runs (`perfkit stage {out_dir.name}`)")
    body = json.loads(path.read_text())
    if body.get("schema") == 1 and isinstance(body.get("result"), dict):  # stages judged their own claims then
        body["result"].get("fields", {}).pop("checks", None)
        body["schema"] = SCHEMA
    if body.get("schema") != SCHEMA or "result" not in body:
        raise ResultFileError(f"{path}: schema {body.get('schema')!r}; this perfkit reads schema {SCHEMA}: rerun the stage")
    try:
        return decode(body["result"])
    except (TypeError, KeyError) as exc:  # a class whose fields changed since the file was written
        raise ResultFileError(f"{path}: written by other code than this ({exc}): rerun the stage") from exc
