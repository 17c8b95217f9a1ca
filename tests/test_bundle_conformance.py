"""Model Zoo conformance: metadata against the Zoo's schema, no duplicate keys, pins agree, standalone configs pass
MONAI's property checks (what MONAI Label's bundle tasks and MONAI FL drive a bundle through)."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil

import pytest
import yaml

from conftest import BUNDLE, REPO, SHARED_DATA

SCHEMA = os.path.join(SHARED_DATA, "..", "reference", "meta_schema_20240725.json")
META = os.path.join(BUNDLE, "configs", "metadata.json")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate keys {dupes}")
    return dict(pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate keys {dupes} at line {node.start_mark.line + 1}")
        return super().construct_mapping(node, deep=deep)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(BUNDLE, "configs", "*.*"))), ids=os.path.basename)
def test_configs_have_no_duplicate_keys(path):
    with open(path) as f:
        if path.endswith(".json"):
            json.load(f, object_pairs_hook=_no_duplicates)
        elif path.endswith(".yaml"):
            yaml.load(f, Loader=_UniqueKeyLoader)


def test_duplicate_key_checks_can_fail():
    with pytest.raises(ValueError, match="required_packages_version"):
        json.loads('{"required_packages_version": {}, "required_packages_version": {}}', object_pairs_hook=_no_duplicates)
    with pytest.raises(ValueError, match="seed"):
        yaml.load("seed: 0\nseed: 1\n", Loader=_UniqueKeyLoader)


def test_metadata_passes_the_model_zoo_schema(tmp_path):
    from monai.bundle import verify_metadata

    if not os.path.isfile(SCHEMA):
        pytest.skip(f"the Model Zoo schema copy is absent: {SCHEMA} (it lives in ../shared/reference)")
    local = tmp_path / os.path.basename(json.load(open(META))["schema"])
    shutil.copy(SCHEMA, local)  # present, so verify_metadata validates against it without downloading
    verify_metadata(meta_file=META, filepath=str(local))
    broken = tmp_path / "broken.json"
    meta = json.load(open(META))
    del meta["network_data_format"]
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(local))


def _pins() -> dict[str, str]:
    pins = {}
    for line in open(os.path.join(REPO, "requirements.txt")):
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_metadata_versions_are_the_requirements_pins():
    meta = json.load(open(META))
    pins = _pins()
    wanted = {**meta["required_packages_version"], "monai": meta["monai_version"], "torch": meta["pytorch_version"],
              "numpy": meta["numpy_version"]}  # fmt: skip
    wrong = {k: (v, pins.get(k.lower())) for k, v in wanted.items() if pins.get(k.lower()) != v}
    assert not wrong, f"metadata version vs requirements.txt pin: {wrong}"
    # what the scripts import is declared (a bundle installed from its metadata must run)
    for package in ("pytorch-ignite", "itk", "nibabel", "mlflow", "pillow", "matplotlib", "onnxruntime", "tqdm"):
        assert package in meta["required_packages_version"], package


def _check(config_file, workflow_type: str, caplog, **override) -> list[str]:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_file, workflow_type=workflow_type, meta_file=META, **override
    )  # fmt: skip
    workflow.initialize()
    with caplog.at_level(logging.WARNING):
        missing = workflow.check_properties()
    wrong_ids = [r.getMessage() for r in caplog.records if "wrong ID" in r.getMessage() or "does not contain" in r.getMessage()]
    return missing + wrong_ids


@pytest.mark.parametrize(
    "files, kind",
    [("configs/inference.yaml", "inference"), ("configs/train.yaml", "train"),
     (["configs/inference.yaml", "configs/train.yaml"], "train")],
    ids=["inference-alone", "train-alone", "train-layered"],
)  # fmt: skip
def test_standalone_configs_pass_the_property_checks(files, kind, tiny_demo, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(BUNDLE)  # macros name files relative to the bundle folder, as Model Zoo commands run
    assert _check(files, kind, caplog, dataset_dir=tiny_demo, output_dir=str(tmp_path)) == []


def test_property_check_finds_a_missing_property(tiny_demo, tmp_path, monkeypatch, caplog):
    """The check above can fail: without the top-level dataset the inference workflow is incomplete."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(BUNDLE)
    config = ConfigParser.load_config_file("configs/inference.yaml")
    del config["dataset"]
    path = tmp_path / "no_dataset.json"
    path.write_text(json.dumps(config))
    with pytest.raises(KeyError, match="'dataset'"):  # MONAI raises for a required property it cannot find
        _check(str(path), "inference", caplog, dataset_dir=tiny_demo, output_dir=str(tmp_path))
