"""`peftkit plan`: put memory, verdicts, advice, cost and storage together, as JSON or as tables.

    report = build_report([spec], gpus=select_gpus("rtx-4090"), tokens=10_000_000)
    print_report(report, console)           # or json.dumps(report)

Advice is given when exactly one device is judged (one `--gpu`, `--gpu-memory`, or the device of
this machine for a recipe) and the plan does not fit it.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from peftkit.plan.advise import advise, verdicts
from peftkit.plan.cost import DEFAULT_UTILISATION, estimate_cost, storage
from peftkit.plan.hardware import Device
from peftkit.plan.memory import ServePlanSpec, TrainPlanSpec, plan_serving, plan_training
from peftkit.resources import human_bytes


def build_report(specs: list[TrainPlanSpec], devices: list[Device], tokens: int | None = None,
                 utilisation: float = DEFAULT_UTILISATION, tasks: int = 100) -> dict:
    """Memory plan, verdict per device, advice (one device, does not fit), cost and storage per spec."""
    plans = []
    for spec in specs:
        plan = plan_training(spec)
        entry = {"method": spec.method, "memory": plan.to_dict(), "verdicts": verdicts(plan, devices)}
        if len(devices) == 1 and not entry["verdicts"][0]["fits"]:
            entry["advice"] = advise(spec, devices[0].memory_bytes)
        if tokens:
            entry["cost"] = [estimate_cost(spec, tokens, d, utilisation) for d in devices if d.bf16_tflops]
        if spec.method != "full" or len(specs) == 1:
            entry["storage"] = storage(spec, tasks)
        plans.append(entry)
    return {"plans": plans, "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in devices]}


def build_serve_report(spec: ServePlanSpec, devices: list[Device]) -> dict:
    """Serving memory (weights, KV cache, adapter slots) and a verdict per device."""
    plan = plan_serving(spec)
    return {"serve": plan.to_dict(), "verdicts": verdicts(plan, devices),
            "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in devices]}


def print_serve_report(report: dict, console: Console) -> None:
    plan = report["serve"]
    s, arch = plan["spec"], plan["architecture"]
    console.print(f"[bold]serving {arch['name']}[/bold]: {s['concurrent']} sequences × {s['context']} tokens, "
                  f"{s['adapters']} adapter slots (r={s['rank']}), {'nf4' if s['quantized'] else s['dtype']}; "
                  f"KV cache {human_bytes(plan['params']['kv_bytes_per_token'])} per token")
    table = Table("component", "bytes")
    for name, value in plan["components"].items():
        table.add_row(name, human_bytes(value))
    table.add_row("[bold]total[/bold]", f"[bold]{human_bytes(plan['peak_bytes'])}[/bold]")
    console.print(table)
    fit = Table("device", "memory", "verdict")
    for v in report["verdicts"]:
        mark = "[green]fits[/green]" if v["fits"] else "[red]no[/red]"
        fit.add_row(v["device"], human_bytes(v["memory_bytes"]),
                    f"{mark} ({'+' if v['headroom_bytes'] >= 0 else '-'}{human_bytes(abs(v['headroom_bytes']))})")
    console.print(fit)


def print_report(report: dict, console: Console) -> None:
    plans = report["plans"]
    first = plans[0]["memory"]
    arch = first["architecture"]
    s = first["spec"]
    console.print(f"[bold]{arch['name']}[/bold] ({arch['source']}): {arch['layers']} layers, hidden {arch['hidden']}, "
                  f"vocab {arch['vocab']}, {first['params']['total'] / 1e9:.3f}B params, {arch['task']}; "
                  f"batch {s['batch']} × seq {s['seq']}, {s['dtype']}, optimizer {s['optimizer']}, "
                  f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, {s['objective']}, for {s['device']}, "
                  f"{s.get('path', 'stock')} training path"
                  + (f"; per GPU of {s['gpus']}, {s['strategy']}{' + CPU offload' if s['cpu_offload'] else ''}"
                     if s.get("gpus", 1) > 1 or s.get("cpu_offload") else "")
                  + ("; activations offloaded" if s.get("activation_offload") else ""))
    table = Table(title="memory per component")
    table.add_column("component", no_wrap=True)
    for p in plans:
        table.add_column(p["method"], justify="right")
    names = list(dict.fromkeys(k for p in plans for k in p["memory"]["components"]))
    names.sort(key=lambda k: not k.startswith("weights"))  # stable: weights first, then the plan's order
    for name in names:
        values = [p["memory"]["components"].get(name, 0) for p in plans]
        if any(values):
            table.add_row(name, *[human_bytes(v) if v else "–" for v in values])
    table.add_row("trainable parameters", *[f"{p['memory']['params']['trainable']:,}" for p in plans])
    for phase in plans[0]["memory"]["phases"]:
        table.add_row(f"at {phase}", *[human_bytes(p["memory"]["phases"].get(phase, 0)) for p in plans])
    table.add_row("[bold]peak[/bold]", *[f"[bold]{human_bytes(p['memory']['peak_bytes'])}[/bold]" for p in plans])
    console.print(table)

    fit = Table(title="verdict: fits? (headroom)")
    fit.add_column("device", no_wrap=True)
    fit.add_column("memory", justify="right")
    for p in plans:
        fit.add_column(p["method"], justify="right")
    for i, d in enumerate(report["devices"]):
        cells = []
        for p in plans:
            v = p["verdicts"][i]
            mark = "[green]fits[/green]" if v["fits"] else "[red]no[/red]"
            cells.append(f"{mark} ({'+' if v['headroom_bytes'] >= 0 else '-'}{human_bytes(abs(v['headroom_bytes']))})")
        fit.add_row(d["name"], human_bytes(d["memory_bytes"]), *cells)
    console.print(fit)

    for p in plans:
        for note in p["memory"]["notes"]:
            console.print(f"[dim]note ({p['method']}): {note}[/dim]")
        if "advice" in p:
            _print_advice(p["method"], p["advice"], console)
    costs = [p for p in plans if p.get("cost")]
    if costs:
        ct = Table(title=f"time and price for {costs[0]['cost'][0]['tokens']:,} training tokens "
                         f"(utilisation {costs[0]['cost'][0]['utilisation']:.0%}, editable prices)")
        ct.add_column("device", no_wrap=True)
        for p in costs:
            ct.add_column(p["method"], justify="right")
        for i, c in enumerate(costs[0]["cost"]):
            ct.add_row(c["device"], *[_fmt_cost(p["cost"][i]) for p in costs])
        console.print(ct)
    for p in plans:
        st = p.get("storage")
        if st:
            console.print(
                f"storage ({p['method']}): one base {human_bytes(st['base_bytes'])} + {st['tasks']} adapters of "
                f"{human_bytes(st['adapter_bytes'])} = {human_bytes(st['base_plus_adapters_bytes'])} vs "
                f"{st['tasks']} full copies {human_bytes(st['full_copies_bytes'])} ({st['ratio']:.0f}× less)")
            break


def _fmt_cost(c: dict) -> str:
    if c["hours"] is None:
        return "–"
    price = f", ${c['usd']:,.2f}" if c["usd"] is not None else ""
    return f"{c['hours']:.2f} h{price}"


def _print_advice(method: str, advice: dict, console: Console) -> None:
    console.print(f"[bold]{method} does not fit {human_bytes(advice['memory_bytes'])}.[/bold] Changes, cheapest first:")
    for c in advice["single_changes"]:
        mark = "[green]fits[/green]" if c["fits"] else "[red]still too big[/red]"
        console.print(f"  • {c['change']}: {human_bytes(c['peak_bytes'])} {mark}")
    if advice["cumulative"]:
        steps = " + ".join(c["change"].split(" (")[0] for c in advice["cumulative"])
        last = advice["cumulative"][-1]
        result = "fits" if last["fits"] else "still does not fit"
        console.print(f"  combined: {steps} → {human_bytes(last['peak_bytes'])}, {result}")
