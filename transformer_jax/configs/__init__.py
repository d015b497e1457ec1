"""The shipped run configs, one file per experiment: `tjax train --config NAME`.

Each file defines `get_config()`; `transformer_jax.config.load_config` accepts
a file's name (`translate_tiny`) or the path of any config file.
"""
