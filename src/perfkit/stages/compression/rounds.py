"""The compression figures a claim or a conclusion uses, timed again in interleaved rounds.

The level sweep (every gzip, zstd and Brotli level) runs once: it draws the trade-off curve and each of
its points is marked as one round. What the summary and the claims use is timed again in
`measure.rounds` rounds, codecs interleaved, each timing with its own warm-up: Brotli 11 (C7) and, per
payload, the `rounds_top` codecs the sweep found fastest end to end at each link speed, plus sending it
plain. The fastest codec at a link speed is then named only when its interval of modelled end-to-end
time clears every other candidate's; otherwise the candidates whose intervals overlap it are named as a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, timed_rounds

if TYPE_CHECKING:
    import pandas as pd

    from perfkit.config import Config
    from perfkit.optim.compress import Codec


@dataclass(frozen=True)
class Timed:
    """One codec on one payload over the rounds: seconds per compress and per decompress call."""

    payload: str
    codec: str
    family: str
    input_bytes: int
    output_bytes: int
    compress_s: Spread
    decompress_s: Spread

    def total(self, mbit: float) -> Spread:
        """Modelled end-to-end seconds per round: compress + bytes / link + decompress (plain: the wire only)."""
        wire = self.output_bytes * 8 / (mbit * 1e6)
        coded = self.family != "none"
        values = tuple(wire + coded * (c + d) for c, d in zip(self.compress_s.values, self.decompress_s.values))
        within = max(self.compress_s.cv_within, self.decompress_s.cv_within) if coded else 0.0
        return Spread(values, within, min(self.compress_s.samples, self.decompress_s.samples))


def candidates(end_to_end: pd.DataFrame, top: int) -> dict[str, set[str]]:
    """Per payload: the `top` fastest codecs at each link speed in the one-round sweep, plus none."""
    out: dict[str, set[str]] = {}
    for (payload, _), group in end_to_end.groupby(["payload", "link_mbit"]):
        out.setdefault(payload, {"none"}).update(group.nsmallest(top, "total_s").codec)
    return out


def time_rounds(cfg: Config, bodies: dict[str, bytes], wanted: dict[str, set[str]], lookup: dict[str, Codec]) -> list[Timed]:
    """Every wanted codec on its payload, compress and decompress, in `measure.rounds` interleaved rounds."""
    c = cfg.compression
    calls: dict[tuple[str, str, str], Any] = {}
    packed: dict[tuple[str, str], bytes] = {}
    for payload, names in wanted.items():
        body = bodies[payload]
        for name in sorted(names):
            codec = lookup[name]
            packed[(payload, name)] = blob = codec.compress(body)
            calls[(payload, name, "compress")] = lambda codec=codec, body=body: codec.compress(body)
            calls[(payload, name, "decompress")] = lambda codec=codec, blob=blob: codec.decompress(blob)
    spreads = timed_rounds(
        {"|".join(k): fn for k, fn in calls.items()},
        cfg.measure.rounds,
        warmup=c.warmup,
        min_repeats=c.min_repeats,
        min_duration_s=c.min_duration_s,
        max_duration_s=c.max_duration_s,
    )
    return [
        Timed(
            payload,
            name,
            lookup[name].family,
            len(bodies[payload]),
            len(packed[(payload, name)]),
            spreads[f"{payload}|{name}|compress"],
            spreads[f"{payload}|{name}|decompress"],
        )
        for payload, names in wanted.items()
        for name in sorted(names)
    ]


def pick(timed: list[Timed], payload: str, mbit: float) -> tuple[list[str], Spread, Spread | None]:
    """(the fastest codec, or every codec tied with it; its modelled seconds; its speed-up over plain, paired by round).

    Tied: a candidate whose interval of modelled time overlaps the fastest one's."""
    from perfkit.measure import ratio

    mine = {t.codec: t.total(mbit) for t in timed if t.payload == payload}
    best = min(mine, key=lambda k: mine[k].mean)
    low, high = mine[best].ci or (mine[best].mean, mine[best].mean)
    tied = [k for k, s in sorted(mine.items(), key=lambda kv: kv[1].mean) if k == best or (s.ci or (s.mean, s.mean))[0] <= high]
    plain = mine.get("none")
    speedup = ratio(plain, mine[best]) if plain is not None else None
    return tied, mine[best], speedup
