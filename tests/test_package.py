"""The package's documented entry points: `peftkit.train(...)`, `peftkit.evaluate(...)`, ..."""

import subprocess
import sys


def test_stage_functions_stay_callable_after_submodule_imports():
    # `peftkit.train` is also a package: importing anything under it rebinds the attribute to the module,
    # which used to make the documented `peftkit.train(recipe)` fail the second time it was used.
    code = """
import peftkit
first = peftkit.train
import peftkit.train.allocator, peftkit.evaluate.run, peftkit.quickstart
assert callable(first) and callable(peftkit.train) and callable(peftkit.evaluate) and callable(peftkit.quickstart)
import peftkit.train.run as run
assert peftkit.train.run is run and peftkit.train.allocator.MMAP_THRESHOLD_BYTES > 0
from peftkit import merge, load_recipe
assert merge.__name__ == "merge" and load_recipe.__name__ == "load_recipe"
try:
    peftkit.train("no/such/recipe.yaml")
except Exception as e:
    assert "no/such/recipe.yaml" in str(e), e   # reached train(): the recipe error, not 'not callable'
else:
    raise AssertionError("train() accepted a missing recipe")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
