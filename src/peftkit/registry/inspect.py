"""What `peftkit registry show` and `diff` print: one version's record, or what differs between two.

    describe(registry, "booking-extractor@v1")  -> {"ref", "path", "aliases", "base", "adapter", "gates", "metrics", …}
    diff(registry, "booking-extractor@v1", "booking-extractor@v2")  -> [(field, value in a, value in b), …]

Both read the stored provenance.json (and the audit log for the history); neither verifies, which is
`peftkit audit verify`'s job, so that a tampered version can still be looked at.
"""

from __future__ import annotations

import json

from peftkit.registry.provenance import dependency_digests, recorded_gates, recorded_metrics, subject_digests


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe(registry, ref: str) -> dict:
    version = registry.resolve(ref)
    statement = json.loads((version.path / "provenance.json").read_text(encoding="utf-8"))
    build = statement["predicate"]["buildDefinition"]
    details = statement["predicate"]["runDetails"]
    registration = next((p["annotations"] for p in details["byproducts"] if p["name"] == "registration"), {})
    aliases = sorted(a for a, n in registry.aliases(version.name).items() if n == version.version)
    return {
        "ref": version.ref,
        "path": str(version.path),
        "aliases": aliases,
        "run": details["metadata"]["invocationId"],
        "trained": f"{details['metadata']['startedOn']} - {details['metadata']['finishedOn']}",
        "base": build["internalParameters"]["base"]["identity"],
        "method": build["externalParameters"]["recipe"]["method"]["kind"],
        "seed": build["internalParameters"]["seed"],
        "adapter": subject_digests(statement),
        "data": dependency_digests(statement, "prepared-split") | dependency_digests(statement, "input-data"),
        "gates": recorded_gates(statement),
        "metrics": recorded_metrics(statement),
        "registered_by": registration.get("actor"),
        "parent": registration.get("parent"),
        "signed": (version.path / "adapter.sig").is_file(),
        "history": [e for e in registry.audit.entries() if e.get("object") == version.ref],
    }


def diff(registry, a: str, b: str) -> list[tuple[str, object, object]]:
    """Every field of the recipe, base, data, adapter files, metrics and gates that differs between a and b."""
    sides = []
    for ref in (a, b):
        version = registry.resolve(ref)
        statement = json.loads((version.path / "provenance.json").read_text(encoding="utf-8"))
        build = statement["predicate"]["buildDefinition"]
        flat = _flatten({"recipe": build["externalParameters"]["recipe"]})
        flat |= {"base": build["internalParameters"]["base"]["identity"]}
        flat |= {f"data.{k}": v for k, v in (dependency_digests(statement, "prepared-split")
                                              | dependency_digests(statement, "input-data")).items()}
        flat |= {k: v for k, v in subject_digests(statement).items()}
        flat |= {f"metric.{k}": v for k, v in recorded_metrics(statement).items()}
        flat |= {f"gate.{k}": v["passed"] for k, v in recorded_gates(statement).items()}
        sides.append(flat)
    keys = sorted(sides[0].keys() | sides[1].keys())
    return [(k, sides[0].get(k), sides[1].get(k)) for k in keys if sides[0].get(k) != sides[1].get(k)
            and k not in ("recipe.output.run_id",)]
