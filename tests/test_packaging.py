"""What pyproject.toml promises: bounded Keras, and tfmot only as an optional extra."""

import ast
import pathlib
import re

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements):
    return {re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_keras_is_bounded_to_the_versions_the_suite_ran_on():
    import keras

    (keras_requirement,) = [r for r in PROJECT["dependencies"] if _names([r]) == {"keras"}]
    ceiling = re.search(r"<(\d+)\.(\d+)", keras_requirement)
    assert ceiling, f"no upper bound in {keras_requirement!r}"
    installed = tuple(int(part) for part in keras.__version__.split(".")[:2])
    assert installed < (int(ceiling[1]), int(ceiling[2]))


def test_tfmot_is_an_optional_extra_that_the_package_never_imports():
    assert not {"tensorflow-model-optimization", "tf-keras"} & _names(PROJECT["dependencies"])
    assert {"tensorflow-model-optimization", "tf-keras"} <= _names(
        PROJECT["optional-dependencies"]["tfmot"]
    )
    imported = set()
    for path in (ROOT / "keras_msattn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "keras" in imported  # the scan sees imports
    assert not {"tensorflow_model_optimization", "tf_keras"} & imported
