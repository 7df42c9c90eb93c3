"""``scribe detect``: this machine's devices and the decision a transcriber would make here.

Starts nothing. By default the decision uses the memory estimates of scribe_libs.devices; with
``--measure`` each candidate model is loaded for real and measured, as the transcriber does.
"concurrent batch jobs" is the decision's batch capacity, the number a transcriber with the same
``batch_size`` and CPU replicas runs at once and advertises (unless its ``max_concurrent_jobs``
replaces it).

    scribe detect [--models base,tiny.en] [--compute-type auto] [--device auto] [--measure]
                  [--batch-size 8] [--cpu-replicas 0] [--facts t4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from scribe_libs.devices import (
    FACTS_DIR,
    DeviceFacts,
    RecordedProbe,
    SystemProbe,
    decide,
    load_recorded,
    select_device,
)

GiB = 1 << 30


def _facts_line(facts: DeviceFacts) -> str:
    memory = f"{facts.memory_total_bytes / GiB:.1f} GiB total, {facts.memory_free_bytes / GiB:.1f} GiB free"
    types = ", ".join(sorted(facts.supported_compute_types)) or "unknown"
    extra = f", driver {facts.driver_version}" if facts.driver_version else ""
    return f"  {facts.label}: {memory}; compute types {types}{extra}"


def _measure_for(device: str, index: int, threads: int):  # noqa: ANN202 - a Measure callback
    """A measure callback that loads models for real (the ModelLoader the transcriber uses)."""
    import asyncio

    from scribe_libs.devices.loader import ModelLoader
    from scribe_libs.models import ModelRegistry, ModelSettings

    registry = ModelRegistry(ModelSettings())
    loader = ModelLoader(device, index, threads, lambda name: asyncio.run(registry.resolve(name)))
    return loader.measure


def cmd_detect(args: argparse.Namespace) -> int:
    """Print the facts and the decision with its reasons."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.facts:
        try:
            recorded = load_recorded(args.facts)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cpu = load_recorded("cpu-only") if recorded.device != "cpu" else None
        probe = RecordedProbe([recorded, *([cpu] if cpu else [])])
    else:
        probe = SystemProbe()
    probed = probe.probe()
    selection = select_device(probed, args.device, args.index, getattr(probe, "no_gpu_reason", None))
    if selection.facts is None:
        print(f"error: {selection.reason}", file=sys.stderr)
        return 1
    measure = cpu_measure = None
    if args.measure:
        threads = selection.facts.cpu_cores
        measure = _measure_for(selection.facts.device, selection.facts.index, threads)
        cpu_measure = _measure_for("cpu", 0, threads) if selection.cpu_facts else None
    cpu = selection.facts if selection.facts.device == "cpu" else selection.cpu_facts
    # The transcriber's default (engine.cpu_layout): one CTranslate2 replica per core.
    cpu_replicas = args.cpu_replicas or (cpu.cpu_cores if cpu is not None else 1)
    decision = decide(
        selection.facts, models, args.compute_type, measure=measure, cpu_facts=selection.cpu_facts,
        cpu_measure=cpu_measure, batch_size=args.batch_size, cpu_replicas=cpu_replicas,
    )
    steps = [selection.reason, *decision.steps]
    if args.json:
        print(json.dumps({
            "devices": [f.to_dict() for f in probed],
            "device": decision.device,
            "ready": decision.ready,
            "not_ready_reason": decision.not_ready_reason,
            "compute_type_requested": decision.compute_type_requested,
            "compute_type_effective": decision.compute_type_effective,
            "models": decision.resident_models,
            "memory_models_bytes": decision.memory_models_bytes,
            "memory_needed_bytes": decision.memory_needed_bytes,
            "measured": decision.measured,
            "batch_capacity": decision.batch_capacity,
            "batch_size": args.batch_size,
            "realtime_capacity": decision.realtime_capacity,
            "decisions": steps,
            "warnings": decision.warnings,
        }, indent=2))
        return 0 if decision.ready else 1
    print(f"devices ({'recorded: ' + args.facts if args.facts else 'probed'}):")
    for facts in probed:
        print(_facts_line(facts))
    print(f"models requested: {', '.join(models)}; compute type requested: {args.compute_type}")
    print("decision:")
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step}")
    for warning in decision.warnings:
        print(f"warning: {warning}")
    if not decision.ready:
        print(f"NOT READY: {decision.not_ready_reason}")
        return 1
    source = "measured" if decision.measured else "estimated"
    print(
        f"result: {' + '.join(decision.resident_models)} at {decision.compute_type_effective} on {decision.device}; "
        f"models {decision.memory_models_bytes / 2**20:.0f} MiB ({source}); {decision.batch_capacity} concurrent "
        f"batch job(s) at batch size {args.batch_size}, realtime capacity {decision.realtime_capacity}"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``scribe detect``."""
    p = subparsers.add_parser("detect", help="this machine's devices and the compute-type/model decision")
    p.add_argument("--models", default="base", help="comma-separated: batch model first, then realtime models")
    p.add_argument("--compute-type", default="auto", help="CTranslate2 compute type, or auto")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--index", type=int, default=0, help="CUDA device index")
    p.add_argument("--measure", action="store_true", help="load each candidate model and measure it (slower)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows per batch of a batch job (the transcriber's batch_size, default 8)")
    p.add_argument("--cpu-replicas", type=int, default=0,
                   help="CTranslate2 replicas on CPU (the transcriber's cpu_replicas; 0 = one per core)")
    known = ", ".join(sorted(p.stem for p in FACTS_DIR.glob("*.json")))
    p.add_argument("--facts", help=f"decide for recorded device facts instead of this machine ({known})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_detect)
