"""The catalog's registry of embedded datasets: builders found by name, imported on first use."""

import json
import subprocess
import sys

import pytest

from transformer_jax.data import catalog

TOY_MODULE = """
import tensorflow_datasets as tfds


class LocalToyCounts(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"word": tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, word in enumerate(["one", "two", "three"]):
            yield i, {"word": word}
"""


def test_catalog_imports_no_task_or_corpus():
    code = (
        "import json, sys\n"
        "from transformer_jax.data import catalog\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('transformer_jax'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "transformer_jax.data.catalog" in loaded
    assert [m for m in loaded if m.startswith("transformer_jax.tasks") or "corpus" in m] == []


def test_en_es_grammar_is_the_translation_builder(tmp_path):
    b = catalog.builder("en_es_grammar/tiny", str(tmp_path))
    assert type(b).__module__ == "transformer_jax.tasks.translation.dataset"
    assert (b.name, str(b.version), b.builder_config.name) == ("en_es_grammar", "1.1.0", "tiny")
    assert [c.name for c in type(b).BUILDER_CONFIGS] == ["full", "tiny"]


def test_registered_builder_is_imported_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "local_toy_counts_ds.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(catalog, "LOCAL_BUILDERS", dict(catalog.LOCAL_BUILDERS))
    catalog.register_local_builder("local_toy_counts", "local_toy_counts_ds:LocalToyCounts")
    assert "local_toy_counts_ds" not in sys.modules
    src = catalog.data_source("local_toy_counts", "train", str(tmp_path / "tfds"))
    assert "local_toy_counts_ds" in sys.modules
    assert sorted(src[i]["word"] for i in range(len(src))) == [b"one", b"three", b"two"]


def test_registry_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "LOCAL_BUILDERS", dict(catalog.LOCAL_BUILDERS))
    with pytest.raises(ValueError, match="'nowhere' is not package.module:Class"):
        catalog.register_local_builder("broken_local", "nowhere")
    catalog.register_local_builder("broken_local", "no_such_module_here:Builder")
    with pytest.raises(ValueError, match="Cannot import the builder .* 'broken_local'") as e:
        catalog.data_source("broken_local", "train", str(tmp_path))
    assert "\n" not in str(e.value)
    catalog.register_local_builder(
        "renamed_local", "transformer_jax.tasks.translation.dataset:EnEsGrammar"
    )
    with pytest.raises(ValueError, match="is not dataset 'renamed_local'"):
        catalog.builder("renamed_local", str(tmp_path))
