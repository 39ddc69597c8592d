"""Interference predictors in the simulator: accuracy, convergence, drift, and their effect on the
deadline policy. Reproduces the experiments of "ML Inference Scheduling with Predictable
Latency" (shared/REFERENCES.md) on the synthetic H100 zoo.

Setup: 2 simulated H100s, each split into two 66-SM lanes: GPU 0 serves BERT | ResNet-50 (+
DenseNet-161, which joins in the drift experiment), GPU 1 VGG-16 | MobileNetV2. Bursty arrivals
(Gamma, CV 2), so what runs beside a batch keeps changing. Ground truth: gpu-let's linear
interference model, or the nonlinear one.

1. accuracy: relative error of each predictor's batch-latency prediction: static (offline
   least squares over coarse features), EWMA (offline, fine-grained features, alpha 0.1, 0.3, 0.5,
   0.9), online SGD, online RLS, plus the profile alone and the policy's built-in slow-down
   factor ("none"). Offline fits come from a separate profiling run (other seed).
2. convergence: rolling error of SGD and RLS from their first batch (they start from "latency =
   solo latency").
3. drift: at 60 s DenseNet-161 joins, rates change and interference grows 2.5x (extra
   slow-down); rolling error over time, and batches until each is back under 5% (one seed in
   the drift table; median and worst over 8 arrival seeds in "recovery", since one crossing of
   a rolling error near its floor is noisy).
4. scheduling: SLO attainment and goodput of the deadline policy with each predictor in the
   drift run, sweeping BERT's rate after the drift (its lane saturates first; the other models
   stay at 100%): the highest rate at which BERT's requests keep >= 99% attainment with each
   predictor, with the policy's adaptive safety margin and with the margin fixed at its floor
   (where only the predictor guards the deadline).

    python benchmarks/predictor.py [--seconds 60] [--replot]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("bert", "resnet50", "densenet161", "vgg16", "mobilenet_v2")
LANES = [{"gpu": 0, "sms": 66, "models": ["bert"]},
         {"gpu": 0, "sms": 66, "models": ["resnet50", "densenet161"]},
         {"gpu": 1, "sms": 66, "models": ["vgg16"]},
         {"gpu": 1, "sms": 66, "models": ["mobilenet_v2"]}]
BEFORE = {"bert": 450, "resnet50": 900, "vgg16": 300, "mobilenet_v2": 1500}
AFTER = {"bert": 450, "resnet50": 450, "densenet161": 100, "vgg16": 250, "mobilenet_v2": 1000}
# The deadline policy's safety margin: adaptive (default, p99 of recent prediction errors) or
# fixed at its 200 us floor (the lowest quantile), where the predictor alone must be right.
MARGINS = {"adaptive margin": {}, "fixed margin": {"margin_quantile": 0.01}}
BERT_AFTER = (400, 420, 440, 460, 480, 500, 520)  # BERT's rate after the drift, swept
ALPHAS = (0.1, 0.3, 0.5, 0.9)
WINDOW = 50  # batches per rolling-error window
RECOVERY_SEEDS = tuple(range(2, 10))  # arrival seeds of the drift-recovery runs


def simulator(predictor: str, interference, options: Optional[Dict[str, Any]] = None, seed=0,
              policy_options: Optional[Dict[str, Any]] = None):
    import gpulanes as gl

    sim = gl.sim.Simulator(gpus=2, seed=seed, predictor=predictor, interference=interference,
                           predictor_options={"record": True, **(options or {})},
                           policy_options=policy_options)
    for m in MODELS:
        sim.add_model(m)
    sim.set_lanes(LANES)
    return sim


def steady(seconds: float, seed: int):
    from gpulanes import workloads as wl

    return wl.Gamma(BEFORE, 2.0, seconds, seed=seed)


def drifting(seconds: float, seed: int):
    from gpulanes import workloads as wl

    return wl.Steps([(seconds, BEFORE), (seconds, AFTER)], cv=2.0, seed=seed)


def errors(sim) -> Dict[str, np.ndarray]:
    p = sim.predictions()
    return {"rel": (p["predicted_ms"] - p["actual_ms"]) / p["actual_ms"],
            "abs_ms": np.abs(p["predicted_ms"] - p["actual_ms"]),
            "start_s": p["start_s"], "solo_rel": (p["solo_ms"] - p["actual_ms"]) / p["actual_ms"]}


def summary(e: Dict[str, np.ndarray], key: str = "rel") -> Dict[str, float]:
    rel = e[key]
    return {"batches": int(len(rel)), "mape": float(np.abs(rel).mean()),
            "bias": float(rel.mean()), "p99_abs_ms": float(np.percentile(e["abs_ms"], 99))}


def rolling(rel: np.ndarray, window: int = WINDOW) -> np.ndarray:
    a = np.abs(rel)
    c = np.cumsum(np.insert(a, 0, 0.0))
    return (c[window:] - c[:-window]) / window


def offline_weights(interference, seconds: float, alpha: float) -> Dict[str, List[float]]:
    """The profiling phase: a run with recorded co-location, then least squares."""
    import gpulanes as gl

    sim = simulator("none", interference, {"alpha": alpha}, seed=100)
    sim.run(steady(seconds, seed=100))
    p = sim.predictions()
    return {"coarse": gl.predict.least_squares(p["coarse"], p["actual_ms"]).tolist(),
            "fine": gl.predict.least_squares(p["fine"], p["actual_ms"]).tolist()}


def variants(weights: Dict[float, Dict[str, List[float]]]):
    """(label, predictor, options) for every compared predictor."""
    out = [("profile only", "static", {}), ("none (policy scale)", "none", {}),
           ("static", "static", {"weights": weights[0.3]["coarse"]})]
    out += [(f"ewma a={a}", "ewma", {"alpha": a, "weights": weights[a]["fine"]}) for a in ALPHAS]
    out += [("sgd", "sgd", {"alpha": 0.3}), ("rls", "rls", {"alpha": 0.3})]
    return out


def run(args) -> Dict[str, Any]:
    results: Dict[str, Any] = {"setup": {"lanes": LANES, "before": BEFORE, "after": AFTER,
                                         "cv": 2.0, "seconds": args.seconds, "window": WINDOW}}
    for truth in ("linear", "nonlinear"):
        weights = {a: offline_weights(truth, args.seconds, a) for a in ALPHAS}
        acc, conv = {}, {}
        for label, kind, opts in variants(weights):
            sim = simulator(kind, truth, opts)
            sim.run(steady(args.seconds, seed=1))
            e = errors(sim)
            key = "solo_rel" if label == "profile only" else "rel"
            acc[label] = summary(e, key)
            if kind in ("sgd", "rls"):
                conv[label] = rolling(e["rel"])[:2000:10].tolist()
            print(f"[{truth}] {label:<20} MAPE {100 * acc[label]['mape']:5.2f}%  bias "
                  f"{100 * acc[label]['bias']:+6.2f}%  p99 |err| {acc[label]['p99_abs_ms']:.2f} ms",
                  flush=True)
        results[f"accuracy_{truth}"] = acc
        results[f"convergence_{truth}"] = conv
        results[f"weights_{truth}"] = weights[0.3]

    # Drift: offline weights from before the drift; the drift changes models, rates, interference.
    import gpulanes as gl

    truth = gl.sim.drift("linear", start_s=args.seconds, ramp_s=0.0, scale=2.5)
    weights = {a: offline_weights("linear", args.seconds, a) for a in ALPHAS}
    drift_rows, curves = {}, {}
    for label, kind, opts in variants(weights):
        if label.startswith("ewma") and label != "ewma a=0.3":
            continue
        scheduling = {}
        for margin, policy_options in MARGINS.items():
            sweep = []
            for bert in BERT_AFTER:
                AFTER["bert"] = bert
                sim = simulator(kind, truth, opts, policy_options=policy_options)
                out = sim.run(drifting(args.seconds, seed=2), warmup_s=5)
                met = sum(m["met"] for m in out["models"].values())
                req = sum(m["requests"] for m in out["models"].values())
                sweep.append({"bert_after": bert, "attainment": met / req,
                              "bert_attainment": out["models"]["bert"]["attainment"],
                              "goodput": sum(m["goodput"] for m in out["models"].values()),
                              "attainment_per_model": {m: v["attainment"]
                                                       for m, v in out["models"].items()}})
                if margin == "adaptive margin" and bert == 440:
                    e = errors(sim)  # prediction errors: the default policy at 440/s
            held = [r["bert_after"] for r in sweep if r["bert_attainment"] >= 0.99]
            scheduling[margin] = {"sweep": sweep,
                                  "max_bert_rate_at_99": max(held) if held else None}
        key = "solo_rel" if label == "profile only" else "rel"
        after = e["start_s"] >= args.seconds
        roll_after = rolling(e[key][after])
        recovered = next((i + WINDOW for i, v in enumerate(roll_after) if v < 0.05), None)
        drift_rows[label] = {
            "mape_before": float(np.abs(e[key][~after]).mean()),
            "mape_after": float(np.abs(e[key][after]).mean()),
            "mape_after_first_200": float(np.abs(e[key][after][:200]).mean()),
            "batches_to_under_5pct": recovered, **scheduling}
        t = e["start_s"][WINDOW - 1:]
        r = rolling(e[key])
        step = max(1, len(r) // 400)
        curves[label] = {"t": t[::step].tolist(), "rolling": r[::step].tolist()}
        d = drift_rows[label]
        print(f"[drift] {label:<20} MAPE before {100 * d['mape_before']:5.2f}% after "
              f"{100 * d['mape_after']:5.2f}% (first 200: {100 * d['mape_after_first_200']:5.2f}%)"
              f"  under 5% after {d['batches_to_under_5pct']} batches; BERT rate held at 99%: "
              + "  ".join(f"{m} {d[m]['max_bert_rate_at_99']}/s" for m in MARGINS)
              + "  BERT attainment by rate (fixed margin): "
              + " ".join(f"{100 * r['bert_attainment']:.2f}" for r in d["fixed margin"]["sweep"]),
              flush=True)
    results["drift"] = drift_rows
    results["drift_curves"] = curves
    AFTER["bert"] = 440
    recovery = {}
    for label, kind, opts in variants(weights):
        if label == "profile only" or (label.startswith("ewma") and label != "ewma a=0.3"):
            continue
        batches = []
        for seed in RECOVERY_SEEDS:
            sim = simulator(kind, truth, opts)
            sim.run(drifting(args.seconds, seed=seed), warmup_s=5)
            e = errors(sim)
            roll = rolling(e["rel"][e["start_s"] >= args.seconds])
            batches.append(next((i + WINDOW for i, v in enumerate(roll) if v < 0.05), None))
        done = [b for b in batches if b is not None]
        recovery[label] = {"seeds": list(RECOVERY_SEEDS), "batches_to_under_5pct": batches,
                           "median": float(np.median(done)) if len(done) == len(batches) else None,
                           "worst": max(done) if len(done) == len(batches) else None}
        print(f"[recovery] {label:<20} batches until < 5% by seed: {batches}  median "
              f"{recovery[label]['median']}  worst {recovery[label]['worst']}", flush=True)
    results["recovery"] = recovery
    return results


def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    for i, truth in enumerate(("linear", "nonlinear")):
        acc = results[f"accuracy_{truth}"]
        labels = list(acc)
        ax[0][0].barh([f"{l} ({truth})" for l in labels], [100 * acc[l]["mape"] for l in labels],
                      color=f"C{i}")
    ax[0][0].set_xlabel("mean relative error of batch latency (%)")
    ax[0][0].set_title("accuracy (steady load)")
    for label, curve in results["convergence_linear"].items():
        ax[0][1].plot(np.arange(len(curve)) * 10 + WINDOW, 100 * np.array(curve), label=label)
    ax[0][1].set_xlabel("batches observed")
    ax[0][1].set_ylabel(f"rolling error, {WINDOW} batches (%)")
    ax[0][1].set_title("convergence from 'latency = solo latency' (linear truth)")
    ax[0][1].legend()
    for label, c in results["drift_curves"].items():
        ax[1][0].plot(c["t"], 100 * np.array(c["rolling"]), label=label)
    ax[1][0].axvline(results["setup"]["seconds"], color="k", ls=":")
    ax[1][0].axhline(5, color="gray", ls="--")
    ax[1][0].set_xlabel("simulated time (s)")
    ax[1][0].set_ylabel(f"rolling error, {WINDOW} batches (%)")
    ax[1][0].set_title("drift at the dotted line: new model, new rates, 2.5x interference")
    ax[1][0].set_ylim(0, 40)
    ax[1][0].legend(fontsize=8)
    drift = results["drift"]
    for k, label in enumerate(drift):
        for margin, style in zip(MARGINS, ("-", ":")):
            sweep = drift[label][margin]["sweep"]
            ax[1][1].plot([r["bert_after"] for r in sweep],
                          [100 * r["bert_attainment"] for r in sweep],
                          style, color=f"C{k}", label=f"{label}, {margin}")
    ax[1][1].axhline(99, color="gray", ls="--")
    ax[1][1].set_xlabel("BERT requests/s after the drift")
    ax[1][1].set_ylabel("BERT's SLO attainment, whole run (%)")
    ax[1][1].set_title("deadline policy with each predictor")
    ax[1][1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--replot", type=Path, default=None, help="redraw the plot of a result JSON")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from _common import RESULTS, environment, write_result

    if args.replot:
        doc = json.loads(args.replot.read_text())
        plot(doc["results"], args.replot.with_suffix(".png"))
        return
    path = write_result("predictor", environment("cpu"), run(args), args.out or RESULTS)
    plot(json.loads(path.read_text())["results"], path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
