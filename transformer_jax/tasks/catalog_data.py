"""What the tasks reading a tfds catalog dataset (`data.name`, `data.data_dir`) share."""

from __future__ import annotations


class CatalogData:
    """`Task` methods for a run whose data is `cfg.data.name` in `cfg.data.data_dir`."""

    def _source(self, split: str):
        """The random-access source of one split; this package's own datasets are
        generated on first use, others must be prepared."""
        from transformer_jax.data import catalog

        d = self.cfg.data
        return catalog.data_source(d.name, split, d.data_dir or None)

    def check_data(self) -> None:
        from transformer_jax.data import catalog

        catalog.builder(self.cfg.data.name, self.cfg.data.data_dir or None)
