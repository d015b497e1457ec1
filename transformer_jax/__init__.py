"""transformer_jax: a JAX/Flax training stack for Transformer models."""

__version__ = "0.1.0"


def pipeline(task: str | None = None, *, workdir: str, **kwargs):
    """The inference pipeline of a training run, e.g. `pipeline("translation", workdir=...)`."""
    from transformer_jax.pipelines import pipeline as make

    return make(task, workdir=workdir, **kwargs)
