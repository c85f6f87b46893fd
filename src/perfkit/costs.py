"""What a measured throughput costs, from the instance price in `cost.usd_per_hour`.

An instance billed by the hour costs the same whether it serves one request or a thousand, so
the cost of a request is the price of the seconds it occupies at the measured rate:
cost per 1k requests = usd_per_hour / (requests/s x 3600) x 1000. The seed's claim C15 ranks
deployments by QPS per dollar of monthly cost (e.g. 45 QPS / $850 a month = 0.053);
`qps_per_usd_month` is that ratio, from the same monthly price (`usd_per_hour x hours_per_month`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from perfkit.config import CostConfig


@dataclass(frozen=True)
class Cost:
    usd_per_hour: float
    usd_per_month: float
    cost_usd_per_1k_req: float
    qps_per_usd_month: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "usd_per_month": self.usd_per_month,
            "cost_usd_per_1k_req": self.cost_usd_per_1k_req,
            "qps_per_usd_month": self.qps_per_usd_month,
        }


def cost_of(throughput_rps: float, cost: CostConfig) -> Cost:
    """Cost per 1k requests and QPS per $ per month at `throughput_rps` on the configured instance."""
    monthly = cost.usd_per_hour * cost.hours_per_month
    per_1k = cost.usd_per_hour / (throughput_rps * 3600.0) * 1000.0 if throughput_rps > 0 else float("inf")
    per_dollar = throughput_rps / monthly if monthly > 0 else float("inf")
    return Cost(cost.usd_per_hour, monthly, per_1k, per_dollar)


def instances_for(target_qps: float, rps_per_instance: float) -> float:
    """Instances needed to serve `target_qps` when each serves `rps_per_instance` (inf when one serves nothing)."""
    return math.ceil(target_qps / rps_per_instance) if rps_per_instance > 0 else math.inf
