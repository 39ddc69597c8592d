"""One plan for several machines: the planner sees every machine's GPUs at once, grouped by
machine, and each machine becomes one replica (one Runtime on that machine's GPUs) holding the
models its lanes serve, with the share of each model's rate the plan gave it.

This is what a multi-machine deployment (Ray Serve: one replica per machine, a router sending
each request to a replica that holds its model in proportion to ``route``) applies, and what
``benchmarks/cluster.py`` simulates. Planning is the single-machine planner's (the gpu-let
algorithm over SM-count lanes, csrc/gpulanes/plan/planner.h) on the machines' GPUs in order;
packing (``spread=False``) fills machine 0 first, so whole machines stay free.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .errors import InvalidInput

__all__ = ["plan_cluster"]


def plan_cluster(sim: Any, rates: Mapping[str, float], machines: Sequence[int], *,
                 variant: str = "spatiotemporal",
                 cv: Union[None, float, Mapping[str, Optional[float]]] = None,
                 spread: bool = False, granularity: int = 8) -> Dict[str, Any]:
    """Plans ``rates`` (requests/s per model) on ``machines`` (GPUs per machine, in order;
    ``sim`` is a :class:`gpulanes.sim.Simulator` with that many GPUs in all and the models
    added). Returns:

    - ``plan``: the whole plan, GPU indices global (what ``sim.apply_plan`` takes);
    - ``machines``: per machine, its ``lanes`` (GPU indices local to it), ``models`` (planned
      requests/s of each model it holds) and ``gpus_used``;
    - ``route``: per model, the share of its requests each machine should get (machines that
      hold it, in proportion to their planned rate);
    - ``machines_used``, ``gpus_used``, ``feasible``.
    """
    counts = list(machines)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise InvalidInput(f"machines must list each machine's GPU count (>= 1), got {machines!r}")
    if sum(counts) != len(sim.gpus):
        raise InvalidInput(f"the machines have {sum(counts)} GPUs in all; the simulator has "
                           f"{len(sim.gpus)}")
    plan = sim.plan(rates, variant, gpus=sum(counts), cv=cv, spread=spread,
                    granularity=granularity)
    machine_of: List[int] = [k for k, n in enumerate(counts) for _ in range(n)]
    first = [sum(counts[:k]) for k in range(len(counts))]
    out: List[Dict[str, Any]] = [{"machine": k, "gpus": n, "lanes": [], "models": {}}
                                 for k, n in enumerate(counts)]
    for lane in plan["lanes"]:
        k = machine_of[lane["gpu"]]
        out[k]["lanes"].append({**lane, "gpu": lane["gpu"] - first[k]})
        for pm in lane["models"]:
            out[k]["models"][pm["model"]] = out[k]["models"].get(pm["model"], 0.0) + pm["rate"]
    route: Dict[str, Dict[int, float]] = {}
    for m in out:
        m["gpus_used"] = len({lane["gpu"] for lane in m["lanes"]})
        for model, rate in m["models"].items():
            route.setdefault(model, {})[m["machine"]] = rate
    for model, shares in route.items():
        total = sum(shares.values())
        route[model] = {k: (r / total if total > 0 else 1.0 / len(shares))
                        for k, r in shares.items()}
    return {"plan": plan, "machines": out, "route": route,
            "machines_used": sum(1 for m in out if m["lanes"]),
            "gpus_used": plan["gpus_used"], "feasible": plan["feasible"]}
