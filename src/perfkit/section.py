"""The base of every params.yaml section: frozen, and refusing unknown keys. `perfkit.config` re-exports it;
it lives apart so that a shared section declared in its own module (`perfkit.objectives`) needs no import of config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
