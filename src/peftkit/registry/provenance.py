"""provenance.json: an in-toto Statement (v1) with a SLSA v1 provenance predicate for one registered adapter.

    statement = build_provenance(version_dir, lineage, recipe_dict, metrics, actor="ana", parent=None)

- subject: every file of the stored adapter folder, `adapter/<file>`, with its sha256;
- predicate.buildDefinition.externalParameters: the resolved recipe (what the user asked for);
- internalParameters: seed, threads, device, library versions, the base's portable identity;
- resolvedDependencies: the base model's weight files, every input data file, each prepared split,
  the data manifest, and the code (peftkit version + git commit);
- runDetails: builder id, invocation (run name), start and end times; byproducts: metrics.json with
  the gate results, and who registered it (`--actor` or the OS user), and the parent adapter if any.

The statement is written as RFC 8785 canonical JSON, so its sha256 (recorded in the audit log) is the
same wherever it is recomputed.
"""

from __future__ import annotations

import math
from pathlib import Path

from peftkit.registry.digests import canonical, folder_digests, sha256_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/peftkit/peftkit/train@v1"
BUILDER_ID = "https://github.com/peftkit/peftkit"
# How close `peftkit reproduce` must come to each recorded metric: |new - old| <= atol + rtol * |old|.
REPRODUCE_TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


def gate_results(metrics: dict) -> dict[str, dict]:
    """Each gate promotion needs, {name: {"passed": bool | None, "why": str}}; None: the stage has not run."""
    verdict = metrics.get("verdict")
    forgetting = metrics.get("forgetting")
    merge = metrics.get("merge")
    gates = {
        "evaluation": {"passed": None, "why": "no verdict in metrics.json: run `peftkit eval RUN`"} if not verdict
        else {"passed": verdict.get("answer") == "yes" and not verdict.get("flags"),
              "why": f"verdict {verdict.get('answer')!r}" + "".join(f", flag {f['name']}" for f in verdict.get("flags", []))},
        "forgetting": {"passed": None, "why": "no forgetting results in metrics.json: run `peftkit eval RUN`"}
        if not forgetting or "passed" not in forgetting
        else {"passed": bool(forgetting["passed"]),
              "why": f"{len(forgetting.get('checks') or [])} thresholds checked"},
    }
    if merge:  # the parity gate applies only to a run that was merged
        gates["parity"] = {"passed": bool(merge.get("passed")),
                           "why": f"max |logit diff| {merge.get('max_abs_diff')} vs atol {merge.get('atol')}"}
    return gates


def headline_metrics(metrics: dict) -> dict:
    """The numbers a reviewer compares: train/val loss and the tuned scalar metrics."""
    out = {}
    for key in ("train_loss", "val_loss", "steps"):
        value = metrics.get("train", {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"train.{key}"] = value
    for side in ("base", "tuned"):
        for key, value in (metrics.get(side) or {}).items():
            if isinstance(value, (int, float)) and key != "examples" and math.isfinite(value):
                out[f"{side}.{key}"] = value
    return out


def build_provenance(version_dir: Path, lineage: dict, recipe: dict, metrics: dict, actor: str,
                     parent: str | None = None, registered: str | None = None) -> dict:
    """The in-toto Statement for the adapter (or model) folder stored in `version_dir` (with its metrics.json)."""
    artifact = lineage.get("artifact", "adapter")
    subject = [{"name": f"{artifact}/{rel}", "digest": {"sha256": digest}}
               for rel, digest in folder_digests(version_dir / artifact).items()]
    base = lineage["base"]
    dependencies = [{"name": f"base/{name}", "uri": base["identity"], "digest": {"sha256": digest},
                     "annotations": {"role": "base-weights"}} for name, digest in sorted(base["weights"].items())]
    for i, data_input in enumerate(lineage["data"]["inputs"]):
        where = data_input.get("file") or data_input.get("builtin") or data_input.get("path") or f"input{i}"
        dependencies.append({"name": f"input/{Path(str(where)).name}", "uri": str(where),
                             "digest": {"sha256": data_input["sha256"]},
                             "annotations": {"role": "input-data", "rows": data_input.get("rows")}})
    for split, digest in sorted(lineage["data"]["splits"].items()):
        dependencies.append({"name": f"data/{split}.jsonl", "digest": {"sha256": digest},
                             "annotations": {"role": "prepared-split"}})
    dependencies.append({"name": "data/manifest.json", "digest": {"sha256": lineage["data"]["manifest_sha256"]},
                         "annotations": {"role": "data-manifest"}})
    code = lineage["code"]
    dependencies.append({"name": "peftkit", "uri": f"pkg:pypi/peftkit@{code['peftkit']}",
                         "digest": {"gitCommit": code["git_commit"]} if code.get("git_commit") else {},
                         "annotations": {"role": "code"}})
    gates = gate_results(metrics)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": recipe},
                "internalParameters": {"seed": lineage["seed"], "threads": lineage["threads"],
                                       "device": lineage["device"], "libraries": lineage["libraries"],
                                       "base": {"name": base["name"], "identity": base["identity"]},
                                       "recipe_sha256": lineage["recipe_sha256"],
                                       "reproduceTolerance": REPRODUCE_TOLERANCE},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"peftkit": code["peftkit"]}},
                "metadata": {"invocationId": lineage["run"], "startedOn": lineage["started"],
                             "finishedOn": lineage["finished"]},
                "byproducts": [{"name": "metrics.json", "digest": {"sha256": sha256_file(version_dir / "metrics.json")},
                                "annotations": {"metrics": headline_metrics(metrics), "gates": gates}},
                               {"name": "registration", "annotations": {"actor": actor, "parent": parent,
                                                                        "registered": registered}}],
            },
        },
    }


def write_provenance(path: Path, statement: dict) -> bytes:
    """Write the statement as canonical JSON; returns the bytes written (their sha256 goes to the audit log)."""
    data = canonical(statement)
    Path(path).write_bytes(data)
    return data


def subject_digests(statement: dict) -> dict[str, str]:
    """{path relative to the version folder: sha256} of the statement's subject."""
    return {s["name"]: s["digest"]["sha256"] for s in statement.get("subject", [])}


def dependency_digests(statement: dict, role: str) -> dict[str, str]:
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    return {d["name"]: d["digest"].get("sha256") for d in deps if d.get("annotations", {}).get("role") == role}


def recorded_gates(statement: dict) -> dict:
    for product in statement["predicate"]["runDetails"]["byproducts"]:
        if product["name"] == "metrics.json":
            return product["annotations"]["gates"]
    return {}


def recorded_metrics(statement: dict) -> dict:
    for product in statement["predicate"]["runDetails"]["byproducts"]:
        if product["name"] == "metrics.json":
            return product["annotations"]["metrics"]
    return {}
