"""``import fcnseg`` stays light: public names load their modules on first use."""

import subprocess
import sys

import pytest

import fcnseg


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


def test_import_loads_neither_the_trainer_nor_protobuf():
    loaded = modules_after("import fcnseg")
    assert "fcnseg.train.trainer" not in loaded
    assert not any(name.startswith("google.protobuf") for name in loaded)
    assert "torch" not in loaded


def test_loading_a_checkpoint_and_configuring_a_run_need_neither():
    loaded = modules_after("import fcnseg\nfcnseg.load, fcnseg.TrainConfig, fcnseg.predict, fcnseg.scores")
    assert "fcnseg.train.config" in loaded and "fcnseg.weights.load" in loaded
    assert "fcnseg.train.trainer" not in loaded
    assert not any(name.startswith("google.protobuf") for name in loaded)


def test_evaluation_and_inference_import_nothing_of_training():
    loaded = modules_after("import fcnseg.cli.evaluate, fcnseg.infer.export, fcnseg.infer.predict")
    assert "fcnseg.metrics.segmentation" in loaded
    assert not any(name.startswith(("fcnseg.train", "google.protobuf")) for name in loaded)
    assert "fcnseg.train.trainer" not in modules_after("import fcnseg.cli.predict")


@pytest.mark.parametrize("name", fcnseg.__all__)
def test_every_public_name_is_its_module_object(name):
    value = getattr(fcnseg, name)
    module = sys.modules[fcnseg._HOMES[name]]
    assert value is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        fcnseg.Trainer  # noqa: B018
    assert set(fcnseg.__all__) <= set(dir(fcnseg))
