"""Evaluation stage: base vs tuned on held-out data, general-ability checks, reports."""

from peftkit._stages import make_callable

make_callable(__name__, "peftkit.evaluate.run", "evaluate")  # peftkit.evaluate(run_dir) calls evaluate()
