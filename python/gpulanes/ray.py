"""gpulanes on Ray Serve: one KServe v2 endpoint over several machines, each running one
:class:`gpulanes.Runtime`, with gpulanes' deadlines and placement kept.

Deployments (one Ray Serve application):

- ``replica-0`` .. ``replica-{n-1}``: one deployment per replica slot (a machine), each one Ray
  Serve replica owning a Runtime built from the same TOML config as ``gpulanes serve`` (its
  ``[runtime]``), serving the models its ``user_config`` names. A new ``user_config`` reaches
  the running replica through Ray Serve's ``reconfigure()``: models it gains are registered
  (loaded, warmed up, profiled) while the others serve, models it loses are unregistered
  (drained). The slots are separate deployments, not replicas of one, because each holds a
  different set of models.
- ``router``: the ingress, speaking the same KServe v2 HTTP API as ``gpulanes serve`` (its app,
  :func:`gpulanes.serve.app`, over :class:`ClusterRuntime`). Each request goes to a replica
  holding its model, picked by the plan's routing shares and its requests in flight, with the deadline it
  has left and its priority. A replica that sheds (``Overloaded``), is full, closed, no longer
  holds the model, or dies gets the request retried on another holder while the deadline
  allows; otherwise the client gets the typed error (503 / 504 ...).

Planning: :meth:`Cluster.apply` takes a placement (``{slot: [models]}``) with routing shares,
or what :func:`gpulanes.cluster.plan_cluster` returns (machine k -> ``replica-k``); it applies
the change through ``serve.run`` with new ``user_config`` values, in two steps (gain first, then
lose) so that a model being moved is always held by some replica. :meth:`Cluster.replan` feeds
the rates the replicas measure to a planner and applies its answer. Within a machine, the
replica's Runtime places lanes itself (and re-plans them with ``replan`` in ``[runtime]``).

Ray is imported only here, and only when used (``pip install 'gpulanes[ray]'``).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import errors
from .errors import DeadlineExceeded, GpuLanesError, InvalidInput, RuntimeClosed, UnknownModel

__all__ = ["run", "app_builder", "Cluster", "ClusterRuntime", "Replica", "Router"]

# Errors after which another replica holding the model may still serve the request in time.
_RETRIABLE = ("Overloaded", "QueueFull", "RuntimeClosed", "UnknownModel")
_ONGOING = 4096  # Ray Serve's default (5 per replica) would queue what the runtime should batch


def _serve():
    try:
        from ray import serve
    except ImportError:
        raise InvalidInput("gpulanes.ray needs Ray Serve: pip install 'gpulanes[ray]'") from None
    return serve


def _error(name: str, message: str) -> GpuLanesError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GpuLanesError)):
        cls = errors.ModelError
    return cls(message)


# -- the replica -------------------------------------------------------------------------------

class Replica:
    """One replica slot: a Runtime on this machine serving the models of its ``user_config``
    (``{"models": [...]}``). Ray Serve calls it on the replica's asyncio loop; the Runtime's
    blocking control calls run in threads."""

    def __init__(self, config_path: str, slot: str) -> None:
        from .serve.config import load_config

        self.cfg = load_config(config_path)
        self.slot = slot
        self.rt = self.cfg.new_runtime()
        self.rt.start()
        self._lock = asyncio.Lock()  # one reconfiguration at a time

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        wanted = list(user_config.get("models", []))
        declared = {m.name: m for m in self.cfg.models}
        unknown = [m for m in wanted if m not in declared]
        if unknown:
            raise InvalidInput(f"{self.slot}: models {unknown} are not in the config")
        async with self._lock:
            for name in wanted:
                if name not in self.rt.models:
                    await asyncio.to_thread(declared[name].register, self.rt)
            for name in self.rt.models:
                if name not in wanted:
                    await asyncio.to_thread(self.rt.unregister, name)

    async def infer(self, model: str, inputs: List[Any], deadline_ms: Optional[float],
                    priority: int) -> Tuple[str, Any]:
        """("ok", outputs) or ("error", (error class name, message)): errors travel as values,
        so that the router sees gpulanes' types whatever Ray wraps exceptions in."""
        try:
            out = await self.rt.infer_async(model, *inputs, deadline_ms=deadline_ms,
                                            priority=priority)
        except GpuLanesError as e:
            return "error", (type(e).__name__, str(e))
        return "ok", out

    def info(self) -> Dict[str, Any]:
        return {"slot": self.slot, "pid": os.getpid(), "host": socket.gethostname(),
                "models": list(self.rt.models),
                "submitted": {m: s["submitted"] for m, s in self.rt.stats().items()}}

    def measured_rates(self) -> Dict[str, float]:
        return self.rt.measured_rates()

    def metrics_text(self) -> str:
        return self.rt.metrics_text()

    def check_health(self) -> None:  # Ray Serve: a replica whose runtime stopped is replaced
        if not self.rt.running:
            raise RuntimeClosed(f"{self.slot}: the runtime is not running")

    def __del__(self) -> None:
        rt = getattr(self, "rt", None)
        if rt is not None:
            rt.shutdown(drain=False)


# -- the router --------------------------------------------------------------------------------

class ClusterRuntime:
    """What :func:`gpulanes.serve.app` needs of a runtime, over the replicas: the models the
    plan places, their signatures from the config, and ``infer_async`` routed with retries."""

    def __init__(self, cfg: Any, replicas: Mapping[str, Any], route: Mapping[str, Mapping[str, float]]) -> None:
        from .serve.codec import DATATYPES

        self.cfg = cfg
        self.replicas = dict(replicas)
        self.route: Dict[str, Dict[str, float]] = {}
        self.set_route(route)
        # as Runtime.input_signature: a batched model's string input is one string, shape ()
        self._signatures = {m.name: [(() if t["datatype"] == "BYTES" and m.max_batch_size
                                      else tuple(t["shape"]), DATATYPES[t["datatype"]])
                                     for t in m.inputs]
                            for m in cfg.models}
        self._slo_ms = {m.name: m.slo_ms for m in cfg.models}
        self.counters = {"requests": 0, "retries": 0, "replica_failures": 0, "errors": 0}
        self._in_flight: Dict[str, int] = {}  # per slot: requests sent and not answered

    def set_route(self, route: Mapping[str, Mapping[str, float]]) -> None:
        for model, shares in route.items():
            bad = [s for s in shares if s not in self.replicas]
            if bad:
                raise InvalidInput(f"route for {model!r} names unknown replicas {bad}")
        self.route = {m: {s: float(w) for s, w in shares.items() if w > 0}
                      for m, shares in route.items()}

    @property
    def models(self) -> List[str]:
        return [m for m, shares in self.route.items() if shares]

    @property
    def running(self) -> bool:
        return True

    def input_signature(self, model: str):
        if model not in self._signatures or model not in self.models:
            raise UnknownModel(f"no model named {model!r} is served")
        return list(self._signatures[model])

    def metrics_text(self) -> str:
        lines = []
        for key, value in self.counters.items():
            lines += [f"# TYPE gpulanes_router_{key}_total counter",
                      f"gpulanes_router_{key}_total {value}"]
        return "\n".join(lines) + "\n"

    def _pick(self, model: str, tried: set) -> Optional[str]:
        """Two holders drawn by the plan's shares; the one with fewer requests in flight per
        unit of share (the power of two choices: the shares hold on average, and a replica
        that falls behind gets less)."""
        shares = {s: w for s, w in self.route.get(model, {}).items() if s not in tried}
        if not shares:
            return None
        a, b = random.choices(list(shares), weights=list(shares.values()), k=2)
        return min((a, b), key=lambda s: self._in_flight.get(s, 0) / shares[s])

    async def infer_async(self, model: str, *inputs: Any, deadline_ms: Optional[float] = None,
                          priority: int = 0) -> Any:
        from ray.exceptions import RayError

        if model not in self.models:
            raise UnknownModel(f"no model named {model!r} is served")
        self.counters["requests"] += 1
        budget_ms = deadline_ms if deadline_ms is not None else self._slo_ms[model]
        deadline = time.monotonic() + budget_ms / 1e3
        tried: set = set()
        last: Optional[GpuLanesError] = None
        while True:
            slot = self._pick(model, tried)
            left = deadline - time.monotonic()
            if slot is None or left <= 0:
                self.counters["errors"] += 1
                if left <= 0 and (last is None or type(last).__name__ in _RETRIABLE):
                    raise DeadlineExceeded(f"{model!r}: the deadline passed after trying "
                                           f"{sorted(tried) or 'no replica'}"
                                           + (f" (last: {last})" if last else ""))
                raise last or UnknownModel(f"no replica holds {model!r}")
            if tried:
                self.counters["retries"] += 1
            tried.add(slot)
            # With another holder untried, one replica gets half of what is left: one that died
            # without Ray noticing yet must not take the whole deadline with it.
            others = any(s not in tried for s in self.route.get(model, {}))
            wait_s = left / 2 if others else left
            response = self.replicas[slot].infer.remote(model, list(inputs), left * 1e3, priority)
            self._in_flight[slot] = self._in_flight.get(slot, 0) + 1
            try:
                kind, value = await asyncio.wait_for(response, timeout=wait_s + 0.05)
            except asyncio.TimeoutError:
                response.cancel()
                last = DeadlineExceeded(f"{slot} did not answer within {wait_s * 1e3:.1f} ms")
                continue
            except (RayError, asyncio.CancelledError) as e:  # the replica died or went away
                if isinstance(e, asyncio.CancelledError) and asyncio.current_task().cancelling():
                    raise
                self.counters["replica_failures"] += 1
                last = RuntimeClosed(f"{slot} failed: {type(e).__name__}")
                continue
            finally:
                self._in_flight[slot] -= 1
            if kind == "ok":
                return value
            name, message = value
            last = _error(name, f"{slot}: {message}")
            if name not in _RETRIABLE:
                self.counters["errors"] += 1
                raise last


class Router:
    """The ingress deployment: KServe v2 over HTTP (``gpulanes.serve.app``) on a
    :class:`ClusterRuntime`. ``user_config``: ``{"route": {model: {slot: share}}}``."""

    def __init__(self, config_path: str, replicas: Mapping[str, Any]) -> None:
        from .serve.config import load_config

        self.cfg = load_config(config_path)
        self.cluster = ClusterRuntime(self.cfg, replicas, {})  # the route comes by reconfigure

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        self.cluster.set_route(user_config.get("route", {}))

    def current_route(self) -> Dict[str, Dict[str, float]]:
        return self.cluster.route

    def __serve_build_asgi_app__(self):
        from .serve.http import app
        from .serve.protocol import Endpoint

        endpoint = Endpoint(self.cluster, self.cfg.io(), self.cfg.max_rows,
                            declared=[m.name for m in self.cfg.models])
        return app(self.cluster, endpoint=endpoint, max_body_bytes=self.cfg.max_body_bytes,
                   token=self.cfg.token)


def app_builder(args: Mapping[str, Any]):
    """The Ray Serve application (what the deploy config's ``import_path`` names): a router
    over one replica deployment per slot. ``args``: ``config`` (the TOML path), ``slots``,
    ``ray_actor_options`` of the replicas. Placement and routing are not arguments but each
    deployment's ``user_config``, so that changing them reconfigures the running replicas."""
    serve = _serve()
    replica = serve.deployment(Replica)
    router = serve.deployment(serve.ingress()(Router))
    handles = {slot: replica.options(name=slot, num_replicas=1, max_ongoing_requests=_ONGOING,
                                     ray_actor_options=dict(args.get("ray_actor_options") or {}))
               .bind(args["config"], slot)
               for slot in args["slots"]}
    return router.options(name="router", max_ongoing_requests=_ONGOING).bind(args["config"],
                                                                              handles)


def _placement_from(plan: Mapping[str, Any]) -> Tuple[Dict[str, List[str]], Dict[str, Dict[str, float]]]:
    """(placement, route) of what gpulanes.cluster.plan_cluster returns: machine k is
    replica-k."""
    placement = {f"replica-{m['machine']}": sorted(m["models"]) for m in plan["machines"]}
    route = {model: {f"replica-{k}": share for k, share in shares.items()}
             for model, shares in plan["route"].items()}
    return placement, route


def _even_route(placement: Mapping[str, Sequence[str]]) -> Dict[str, Dict[str, float]]:
    route: Dict[str, Dict[str, float]] = {}
    for slot, models in placement.items():
        for m in models:
            route.setdefault(m, {})[slot] = 1.0
    return route


class Cluster:
    """A running gpulanes application on Ray Serve (what :func:`run` returns)."""

    def __init__(self, config_path: str, name: str, route_prefix: str,
                 ray_actor_options: Dict[str, Any], http_options: Dict[str, Any]) -> None:
        from .serve.config import load_config

        self.config_path = config_path
        self.cfg = load_config(config_path)
        self.name = name
        self.route_prefix = route_prefix
        self.ray_actor_options = ray_actor_options
        self.http_options = http_options
        self.placement: Dict[str, List[str]] = {}
        self.route: Dict[str, Dict[str, float]] = {}

    def _check(self, placement: Mapping[str, Sequence[str]], route: Mapping[str, Mapping[str, float]]) -> None:
        declared = {m.name for m in self.cfg.models}
        if not placement:
            raise InvalidInput("placement must name at least one replica slot")
        for slot, models in placement.items():
            if not isinstance(slot, str) or not slot:
                raise InvalidInput(f"replica slot names must be non-empty strings, got {slot!r}")
            unknown = [m for m in models if m not in declared]
            if unknown:
                raise InvalidInput(f"placement: {slot} names models {unknown} the config lacks")
        for model, shares in route.items():
            for slot, share in shares.items():
                if model not in placement.get(slot, ()):
                    raise InvalidInput(f"route sends {model!r} to {slot}, which does not hold it")
                if (not isinstance(share, (int, float)) or isinstance(share, bool)
                        or not 0 <= share < math.inf):
                    raise InvalidInput(f"route share of {model!r} on {slot} must be >= 0, got {share!r}")

    def _deploy(self, placement: Mapping[str, Sequence[str]],
                route: Mapping[str, Mapping[str, float]]) -> None:
        """Submits the application with this placement and route as a Ray Serve deploy config
        (what ``serve deploy`` / ``serve run CONFIG`` submit): its import path and arguments
        stay the same, so Ray Serve changes only the deployments' user_config and calls
        ``reconfigure()`` on the running replicas. Returns once they all took it."""
        from ray.serve._private.api import serve_start
        from ray.serve.schema import ServeDeploySchema

        route = {m: {s: float(w) for s, w in shares.items() if w > 0} for m, shares in route.items()}
        app = {"name": self.name, "route_prefix": self.route_prefix,
               "import_path": "gpulanes.ray:app_builder",
               "args": {"config": self.config_path, "slots": sorted(placement),
                        "ray_actor_options": self.ray_actor_options},
               "deployments": [{"name": slot, "user_config": {"models": list(models)}}
                               for slot, models in placement.items()]
               + [{"name": "router", "user_config": {"route": route}}]}
        config = ServeDeploySchema(applications=[app], http_options=self.http_options)
        serve_start(http_options=self.http_options).deploy_apps(config, _blocking=False)
        self._wait_for(placement, route)

    def _wait_for(self, placement, route, timeout_s: float = 600.0) -> None:
        from ray.serve.exceptions import RayServeException

        serve = _serve()
        end = time.monotonic() + timeout_s
        while True:
            try:
                status = serve.status().applications.get(self.name)
                if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
                    raise InvalidInput(f"Ray Serve could not deploy {self.name}: {status.message}")
                if status is not None and str(status.status).endswith("RUNNING"):
                    router = serve.get_deployment_handle("router", app_name=self.name)
                    took = router.current_route.remote().result(timeout_s=30) == route and all(
                        set(serve.get_deployment_handle(slot, app_name=self.name)
                            .info.remote().result(timeout_s=30)["models"]) == set(models)
                        for slot, models in placement.items())
                    if took:
                        return
            except (RayServeException, TimeoutError):
                pass
            if time.monotonic() > end:
                raise RuntimeClosed(f"Ray Serve did not apply the placement within {timeout_s:.0f} s")
            time.sleep(0.5)

    def apply(self, placement: Optional[Mapping[str, Sequence[str]]] = None,
              route: Optional[Mapping[str, Mapping[str, float]]] = None, *,
              plan: Optional[Mapping[str, Any]] = None) -> None:
        """Applies a new placement (``{slot: [models]}``, routing shares ``{model: {slot:
        share}}``; even shares when left out) or a :func:`gpulanes.cluster.plan_cluster` plan,
        through Ray Serve's deployment updates. Models move without losing requests: replicas
        first gain what they will hold, then the router takes the new shares, then replicas
        drop what they no longer hold. The set of slots stays what :func:`run` made."""
        placement, route = self._normalized(placement, route, plan)
        if self.placement and set(placement) != set(self.placement):
            raise InvalidInput(f"the replica slots are {sorted(self.placement)}; a plan for "
                               f"{sorted(placement)} needs a new run()")
        if self.placement:  # gain first, keeping the old shares
            union = {s: sorted(set(placement[s]) | set(self.placement[s])) for s in placement}
            self._deploy(union, self.route)
            self._deploy(union, route)
        self._deploy(placement, route)
        self.placement, self.route = placement, route

    def _normalized(self, placement, route, plan):
        """(placement, route) checked, from either form; InvalidInput names what is wrong."""
        if plan is not None:
            if not isinstance(plan, Mapping) or not {"machines", "route"} <= set(plan):
                raise InvalidInput("plan must be what gpulanes.cluster.plan_cluster returns")
            placement, route = _placement_from(plan)
        if not isinstance(placement, Mapping):
            raise InvalidInput(f"placement must map replica slots to lists of models, got "
                               f"{placement!r}")
        for slot, models in placement.items():
            if isinstance(models, (str, bytes)) or not isinstance(models, (list, tuple, set)):
                raise InvalidInput(f"placement[{slot!r}] must be a list of model names, got "
                                   f"{models!r}")
        placement = {s: sorted(set(m)) for s, m in placement.items()}
        if route is None:
            route = _even_route(placement)
        if not isinstance(route, Mapping) or not all(isinstance(v, Mapping) for v in route.values()):
            raise InvalidInput(f"route must map models to {{slot: share}}, got {route!r}")
        route = {m: dict(shares) for m, shares in route.items()}
        self._check(placement, route)
        return placement, route

    def _replicas(self):
        serve = _serve()
        return {slot: serve.get_deployment_handle(slot, app_name=self.name)
                for slot in self.placement}

    def info(self) -> Dict[str, Dict[str, Any]]:
        """Per slot: its pid, host, models and requests submitted per model."""
        return {slot: h.info.remote().result() for slot, h in self._replicas().items()}

    def measured_rates(self) -> Dict[str, float]:
        """Requests/s per model, summed over the replicas' own measurements."""
        total: Dict[str, float] = {}
        for h in self._replicas().values():
            for model, rate in h.measured_rates.remote().result().items():
                total[model] = total.get(model, 0.0) + rate
        return total

    def replan(self, planner) -> Dict[str, float]:
        """Calls ``planner(rates)`` with :meth:`measured_rates` and applies what it returns: a
        ``plan_cluster`` plan, or ``{"placement": ..., "route": ...}``. Returns the rates."""
        rates = self.measured_rates()
        answer = planner(rates)
        if "machines" in answer:
            self.apply(plan=answer)
        else:
            self.apply(answer["placement"], answer.get("route"))
        return rates

    def shutdown(self) -> None:
        _serve().delete(self.name)


def run(config: str, *, replicas: Optional[int] = None,
        placement: Optional[Mapping[str, Sequence[str]]] = None,
        route: Optional[Mapping[str, Mapping[str, float]]] = None,
        plan: Optional[Mapping[str, Any]] = None, name: str = "gpulanes",
        route_prefix: str = "/", ray_actor_options: Optional[Dict[str, Any]] = None,
        http_port: Optional[int] = None) -> Cluster:
    """Starts gpulanes on the current Ray cluster (``ray.init()`` connects to one started with
    ``ray start --head``, else starts a local one) from the ``gpulanes serve`` TOML file
    ``config`` (its path must be readable on every node). Placement: ``plan`` (from
    :func:`gpulanes.cluster.plan_cluster`), or ``placement`` (``{slot: [models]}``) with
    ``route``, or ``replicas`` slots each holding every model the config loads at start
    (default 2). ``ray_actor_options`` go to every replica (e.g. ``{"num_gpus": 8}`` for one
    machine's GPUs each); ``http_port``: where Ray Serve's proxy listens (default 8000)."""
    import ray

    _serve()
    if not isinstance(config, (str, os.PathLike)) or not os.path.isfile(config):
        raise InvalidInput(f"config must be the path of a gpulanes serve TOML file, got {config!r}")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)
                                 or replicas < 1):
        raise InvalidInput(f"replicas must be an integer >= 1, got {replicas!r}")
    if http_port is not None and (isinstance(http_port, bool) or not isinstance(http_port, int)
                                  or not 0 <= http_port < 65536):
        raise InvalidInput(f"http_port must be a port number, got {http_port!r}")
    from .serve.config import load_config

    if ray_actor_options is not None and not isinstance(ray_actor_options, Mapping):
        raise InvalidInput(f"ray_actor_options must be a dict, got {ray_actor_options!r}")
    if not isinstance(name, str) or not name or not isinstance(route_prefix, str) \
            or not route_prefix.startswith("/"):
        raise InvalidInput(f"name must be a non-empty string and route_prefix start with '/', "
                           f"got {name!r}, {route_prefix!r}")
    host = load_config(config).host
    cluster = Cluster(os.path.abspath(config), name, route_prefix,
                      dict(ray_actor_options or {"num_cpus": 1}),
                      {"host": host, "port": 8000 if http_port is None else http_port})
    if plan is None and placement is None:
        loaded = [m.name for m in cluster.cfg.models if m.load]
        placement = {f"replica-{k}": loaded for k in range(replicas or 2)}
    cluster._normalized(placement, route, plan)  # refused before Ray is started
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    cluster.apply(placement, route, plan=plan)
    return cluster


def main(argv: Optional[List[str]] = None) -> int:
    """``gpulanes ray CONFIG.toml``: deploys on the Ray cluster ``ray start --head`` started (or
    RAY_ADDRESS names) and returns; the application lives as long as that cluster."""
    import argparse

    parser = argparse.ArgumentParser(prog="gpulanes ray",
                                     description="Deploy CONFIG's models on the current Ray "
                                                 "cluster behind one KServe v2 HTTP endpoint.")
    parser.add_argument("config", help="the TOML file of gpulanes serve")
    parser.add_argument("--replicas", type=int, default=2, help="replica slots (each holds every "
                        "model the config loads at start)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica")
    args = parser.parse_args(argv)
    import ray

    try:
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
        options = {"num_cpus": 1, "num_gpus": args.num_gpus} if args.num_gpus else None
        cluster = run(args.config, replicas=args.replicas, http_port=args.http_port,
                      ray_actor_options=options)
    except (GpuLanesError, ConnectionError) as e:
        print(f"gpulanes ray: error: {e}", file=sys.stderr)
        return 2
    print(f"gpulanes ray: {cluster.name} serving on port {args.http_port}: "
          + ", ".join(f"{slot}: {models}" for slot, models in cluster.placement.items()),
          file=sys.stderr)
    return 0
