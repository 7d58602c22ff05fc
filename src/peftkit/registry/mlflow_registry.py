"""The adapter registry: versions and aliases in MLflow's Model Registry, the bytes in a registry folder,
every action in the audit log.

    registry = Registry("runs/registry")                      # MLflow store: sqlite:///runs/mlflow.db
    v = registry.add("runs/quickstart-…", "booking-extractor", key="keys/private.pem")   # -> …@v1
    registry.promote("booking-extractor@v1", "production", key="keys/private.pem")        # gates first
    registry.resolve("booking-extractor@production")           # -> Version(name, 1, path)

A version is a folder `<root>/<name>/v<N>/` that looks like a run directory, so that `peftkit serve`
reads it as one:

    recipe.yaml  metrics.json  lineage.json  data/manifest.json  data/{train,val,test}.jsonl
    adapter/     the adapter folder, byte for byte
    provenance.json  in-toto Statement (SLSA v1 provenance), canonical JSON
    adapter.sig      model-signing bundle over adapter/ (with --sign)

MLflow holds the registered model, its versions (source: that folder, linked to the training's MLflow
run, tagged with the provenance and adapter sha256) and the aliases (`production`, `staging`). MLflow
lets anyone with client access move an alias, so an alias is trusted only when the audit log's last
promote or demote of it agrees (`verify.verify_registry`). The MLflow run gets one `log_input` per
input file and prepared split, with our full sha256 (MLflow's digest field holds 36 characters:
`sha256:` + the first 29 hex digits; the full digest is the input's `sha256` tag).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

from peftkit.errors import RegistryError, TamperError
from peftkit.registry.audit import AuditLog, current_actor, now
from peftkit.registry.digests import folder_digests, sha256_file
from peftkit.registry.provenance import build_provenance, gate_results, write_provenance
from peftkit.registry.refs import ALIAS_RE, NAME_RE, VERSION_RE, Version, parse_ref
from peftkit.registry.signing import key_id, load_private, load_public, public_pem, sign_folder
from peftkit.registry.verify import check_run_files, verify_version

TRUSTED_KEY = "trusted_key.pem"  # the public key of the first signer; checkpoints and signatures verify against it
DATA_FILES = ("manifest.json", "train.jsonl", "val.jsonl", "test.jsonl")
RUN_FILES = ("recipe.yaml", "metrics.json", "lineage.json")


class Registry:
    """A registry folder plus the MLflow store its versions and aliases live in.

    Args:
        root: the registry folder (default runs/registry).
        tracking_uri: the MLflow store (default sqlite:///<root's parent>/mlflow.db, the tracking store
            of runs under that folder).
    """

    def __init__(self, root: str | Path = "runs/registry", tracking_uri: str | None = None):
        self.root = Path(root)
        self.tracking_uri = tracking_uri or f"sqlite:///{(self.root.parent / 'mlflow.db').resolve()}"
        self.audit = AuditLog(self.root)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            mlflow.set_tracking_uri(self.tracking_uri)
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ keys
    def trusted_key_path(self) -> Path:
        return self.root / TRUSTED_KEY

    def _signing_key(self, key: str | Path | None):
        """The private key to sign with (None: unsigned); the first one used becomes the registry's trusted key."""
        if key is None:
            return None
        private = load_private(key)
        trusted = self.trusted_key_path()
        if not trusted.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            trusted.write_bytes(public_pem(private.public_key()))
        elif trusted.read_bytes() != public_pem(private.public_key()):
            raise RegistryError(f"{key}: not this registry's signing key: {trusted} holds public key "
                                f"{key_id(load_public(trusted))[:16]}…, this key's is {key_id(private.public_key())[:16]}…; "
                                "sign with the key that signed this registry before")
        return private

    # ------------------------------------------------------------------ add
    def add(self, run_dir: str | Path, name: str, key: str | Path | None = None, actor: str | None = None,
            parent: str | None = None) -> Version:
        """Register a trained, evaluated run's adapter as the next version of `name`."""
        from peftkit.rundir import open_run

        if not NAME_RE.fullmatch(name) or ".." in name:
            raise RegistryError(f"--name {name!r}: expected 1-64 letters, digits, '.', '_' or '-' (no '@': the "
                                "version number is the registry's to give)")
        run_dir, recipe = open_run(run_dir)
        if not (run_dir / "adapter" / "adapter_config.json").is_file():
            raise RegistryError(f"{run_dir}: no adapter/adapter_config.json; the registry stores adapters "
                                "(a fully fine-tuned model/ is not registered)")
        lineage = check_run_files(run_dir, recipe)  # refuses a split or adapter file changed since training
        private = self._signing_key(key)
        actor = current_actor(actor)
        with self._locked():
            client = self.client
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name, description=f"peftkit adapter registry: {name}")
            versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
            number = max(versions, default=0) + 1
            version = Version(name, number, self.root / name / f"v{number}")
            if version.path.exists():
                raise RegistryError(f"{version.path}: already exists but MLflow has no {version.ref}; the "
                                    f"registry folder and the store {self.tracking_uri} disagree")
            self._store(run_dir, version.path, lineage)
            statement = build_provenance(version.path, lineage, recipe.model_dump(mode="json"),
                                         json.loads((version.path / "metrics.json").read_text(encoding="utf-8")),
                                         actor=actor, parent=parent, registered=now())
            write_provenance(version.path / "provenance.json", statement)
            if private is not None:
                sign_folder(version.path / "adapter", version.path / "adapter.sig", Path(key))
            mlflow_run = self._mlflow_run(run_dir, recipe, lineage)
            adapter_sha = sha256_file(version.path / "adapter" / "adapter_model.safetensors")
            tags = {"peftkit.provenance_sha256": sha256_file(version.path / "provenance.json"),
                    "peftkit.adapter_sha256": adapter_sha, "peftkit.run_dir": str(run_dir.resolve()),
                    "peftkit.base": lineage["base"]["identity"], "peftkit.signed": str(private is not None).lower()}
            mv = client.create_model_version(name, source=str(version.path.resolve()), run_id=mlflow_run, tags=tags,
                                             description=f"{run_dir.name} registered by {actor}")
            if int(mv.version) != number:
                raise RegistryError(f"MLflow numbered the new version of {name} {mv.version}, the registry folder "
                                    f"expected {number}; another writer uses {self.tracking_uri} without this registry")
            self.audit.append("add", version.ref, digests=folder_digests(version.path),
                              details={"run": run_dir.name, "mlflow_run_id": mlflow_run, "parent": parent,
                                       "signed": private is not None,
                                       "key_id": key_id(private.public_key()) if private is not None else None},
                              actor=actor, key=private, checkpoint=True)
        return version

    def _store(self, run_dir: Path, target: Path, lineage: dict) -> None:
        """Copy the adapter, the recipe, metrics, lineage and prepared data into the version folder."""
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(run_dir / "adapter", staging / "adapter", symlinks=True)
        for rel in RUN_FILES:
            if rel == "lineage.json":
                (staging / rel).write_text(json.dumps(lineage, indent=2), encoding="utf-8")
            elif (run_dir / rel).is_file():
                shutil.copy2(run_dir / rel, staging / rel)
        (staging / "data").mkdir()
        for rel in DATA_FILES:
            if (run_dir / "data" / rel).is_file():
                shutil.copy2(run_dir / "data" / rel, staging / "data" / rel)
        staging.rename(target)

    def _mlflow_run(self, run_dir: Path, recipe, lineage: dict) -> str:
        """The training's MLflow run in this store (a new one when it has none), with our sha256 inputs logged."""
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        client = self.client
        run_id = None
        id_file = run_dir / "mlflow_run_id"
        if id_file.is_file():
            try:
                run_id = client.get_run(id_file.read_text(encoding="utf-8").strip()).info.run_id
            except Exception:  # a run logged to another store: a new run here links the version instead
                run_id = None
        if run_id is None:
            experiment = client.get_experiment_by_name(recipe.name)
            if experiment is None:
                artifacts = (self.root.parent / "mlartifacts").resolve()
                experiment_id = client.create_experiment(recipe.name, artifact_location=artifacts.as_uri())
            else:
                experiment_id = experiment.experiment_id
            run_id = client.create_run(experiment_id, run_name=run_dir.name,
                                       tags={"peftkit.run_dir": str(run_dir.resolve())}).info.run_id
            client.set_terminated(run_id)
        logged = {d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs}
        inputs = [(f"data/{split}.jsonl", digest, split) for split, digest in lineage["data"]["splits"].items()]
        inputs += [(str(i.get("file") or i.get("builtin") or i.get("path")), i["sha256"], "source")
                   for i in lineage["data"]["inputs"]]
        with mlflow.start_run(run_id=run_id):
            for where, digest, context in inputs:
                if where in logged:
                    continue
                source = LocalArtifactDatasetSource(str((run_dir / where).resolve()) if where.startswith("data/")
                                                    else where)
                dataset = MetaDataset(source=source, name=where, digest=f"sha256:{digest[:29]}")
                mlflow.log_input(dataset, context=context, tags={"sha256": digest})
        return run_id

    # ------------------------------------------------------------------ resolve, list
    def resolve(self, ref: str) -> Version:
        """NAME@vN, NAME@ALIAS or NAME (its latest version) -> the stored version."""
        from mlflow.exceptions import MlflowException

        name, which = parse_ref(ref)
        client = self.client
        try:
            if which is None:
                versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
                if not versions:
                    raise RegistryError(f"{name}: no such registered adapter in {self.tracking_uri}; "
                                        "`peftkit registry list` shows them")
                number = max(versions)
            elif VERSION_RE.fullmatch(which):
                number = int(client.get_model_version(name, which[1:]).version)
            else:
                number = int(client.get_model_version_by_alias(name, which).version)
        except MlflowException:
            raise RegistryError(f"{ref}: no such version or alias in {self.tracking_uri}; "
                                f"`peftkit registry list` shows what is registered") from None
        path = self.root / name / f"v{number}"
        if not path.is_dir():
            raise TamperError(f"{path}: missing; MLflow lists {name}@v{number} but its folder is gone from the registry")
        return Version(name, number, path)

    def list(self) -> list[dict]:
        """One row per version: name, version, aliases, adapter sha256, base, run, signed, created."""
        rows = []
        for model in self.client.search_registered_models():
            aliases: dict[str, list[str]] = {}
            for alias, number in (model.aliases or {}).items():
                aliases.setdefault(str(number), []).append(alias)
            for mv in sorted(self.client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)):
                rows.append({"name": model.name, "version": int(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                             "adapter_sha256": mv.tags.get("peftkit.adapter_sha256"), "base": mv.tags.get("peftkit.base"),
                             "run": Path(mv.tags.get("peftkit.run_dir", "")).name, "signed": mv.tags.get("peftkit.signed"),
                             "created": mv.creation_timestamp})
        return rows

    def aliases(self, name: str) -> dict[str, int]:
        model = self.client.get_registered_model(name)
        return {alias: int(number) for alias, number in (model.aliases or {}).items()}

    # ------------------------------------------------------------------ promote, demote
    def promote(self, ref: str, alias: str, key: str | Path | None = None, actor: str | None = None) -> Version:
        """Point `alias` at a version after checking its files and that every gate passed; audited and
        checkpointed (signed with `key`)."""
        if not ALIAS_RE.fullmatch(alias) or VERSION_RE.fullmatch(alias):
            raise RegistryError(f"--alias {alias!r}: expected a name such as production or staging (not vN)")
        private = self._signing_key(key)
        version = self.resolve(ref)
        verified = verify_version(self, version, check_base=False)
        gates = gate_results(json.loads((version.path / "metrics.json").read_text(encoding="utf-8")))
        for gate, result in gates.items():
            if result["passed"] is not True:
                state = "has not run" if result["passed"] is None else "failed"
                raise RegistryError(f"{version.ref}: not promoted to {alias}: the {gate} gate {state} ({result['why']}); "
                                    "only a version whose evaluation, forgetting and (when merged) parity gates "
                                    "passed is promoted")
        with self._locked():
            self.client.set_registered_model_alias(version.name, alias, str(version.version))
            self.audit.append("promote", version.ref, digests={"provenance.json": verified.provenance_sha256},
                              details={"alias": alias, "gates": {g: r["passed"] for g, r in gates.items()}},
                              actor=actor, key=private, checkpoint=True)
        return version

    def demote(self, name: str, alias: str, key: str | Path | None = None, actor: str | None = None) -> None:
        """Remove `alias` from `name`; audited."""
        private = self._signing_key(key)
        parse_ref(name)
        if alias not in self.aliases(name):
            raise RegistryError(f"{name}@{alias}: no such alias; `peftkit registry show {name}` lists them")
        with self._locked():
            number = self.aliases(name)[alias]
            self.client.delete_registered_model_alias(name, alias)
            self.audit.append("demote", f"{name}@v{number}", details={"alias": alias}, actor=actor, key=private,
                              checkpoint=True)
