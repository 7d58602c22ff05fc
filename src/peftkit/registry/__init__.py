"""Record and audit model changes: an adapter registry on MLflow's Model Registry, in-toto/SLSA provenance,
model-signing signatures, a hash-chained audit log with signed checkpoints, verification at use, and
reproduction from the recorded recipe and data.

    refs.py             NAME@vN / NAME@ALIAS references
    digests.py          sha256 of files, folders, canonical JSON (RFC 8785), cached base weight hashes
    lineage.py          RUN/lineage.json: what went into a run, by sha256
    provenance.py       provenance.json: in-toto Statement + SLSA v1 predicate
    signing.py          EC P-256 keys; model-signing over adapter folders; ECDSA over checkpoints
    audit.py            the append-only hash-chained audit log and its signed checkpoints
    verify.py           run files vs lineage/manifest, versions vs the audit log, the whole registry
    mlflow_registry.py  add / list / promote / demote / resolve on MLflow's Model Registry
    load.py             `registry:NAME@ALIAS` sources for serve: resolve, verify, audit the load
    reproduce.py        retrain a version from its recorded recipe and data; compare
"""
