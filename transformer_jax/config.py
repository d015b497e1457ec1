"""Run configs: the shared base, loading a config file, `--config.key=value` overrides.

A run config is an `ml_collections.ConfigDict`, loaded locked so a mistyped key
is an error. `base()` holds the keys every task has; each task adds its own
(`Task.base_config`) and checks them (`Task.validate_config`). The task then
turns the run config into its typed model config (`Task.model_config`).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, NoReturn

import ml_collections

from transformer_jax.nn.config import REMAT_POLICIES
from transformer_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS


class ConfigError(ValueError):
    """A user-facing configuration problem (one line)."""


def base() -> ml_collections.ConfigDict:
    """The keys every task's run config has, with their defaults.

    A task's own base (e.g. `transformer_jax.tasks.translation.config.translation_base`)
    adds its keys (tokenizer, model architecture, decoding) to these groups.
    """
    c = ml_collections.ConfigDict()
    c.task = ""  # a registered task name, or "package.module:ClassName"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = ""
    c.data.data_dir = ""  # "" = tfds default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.max_length = 256  # tokens per example (per side); longer examples are truncated
    c.data.tokens_per_batch = 25000  # per step, all hosts together
    c.data.eval_tokens_per_batch = 8192

    c.model = ml_collections.ConfigDict()
    c.model.dropout_rate = 0.1
    c.model.attention_impl = "auto"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.remat = "none"  # "none" | "full" | "dots" (save matmul outputs)
    c.model.layer_scale_init = 0.0  # LayerScale's initial residual gain; 0 = off

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-9
    # "rsqrt" (paper): lr_scale * d^-0.5 * min(step^-0.5, step * warmup^-1.5);
    # "cosine" | "linear": linear warmup to peak_lr, then decay to peak_lr * final_lr_fraction
    # at step decay_steps, constant after; "constant": lr_scale.
    c.optimizer.schedule = "rsqrt"
    c.optimizer.lr_scale = 1.0  # multiplies the rsqrt and constant schedules
    c.optimizer.warmup_steps = 4000
    c.optimizer.peak_lr = 1e-3  # cosine and linear only
    c.optimizer.decay_steps = 0  # cosine and linear: step where decay ends; 0 = train.num_steps
    c.optimizer.final_lr_fraction = 0.0  # cosine and linear: final lr / peak_lr
    c.optimizer.grad_clip_norm = 0.0  # 0 = off
    c.optimizer.weight_decay = 0.0  # decoupled (AdamW): lr * weight_decay * param; 0 = off
    c.optimizer.decay_norms = False  # weight decay on norm scales and biases
    c.optimizer.decay_biases = False  # ... on biases (other than norms')
    c.optimizer.decay_embeddings = False  # ... on embedding tables (tokens, positions)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 100_000
    c.train.label_smoothing = 0.1
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.eval_batches = 20  # batches of the eval split for eval loss
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 20
    c.train.progress = True
    c.train.grad_accum_steps = 1  # micro-batches per update (same update as one big batch)
    c.train.on_nonfinite = "stop"  # "stop" | "skip": a NaN/inf loss or gradient
    c.train.inject_nonfinite_step = -1  # fault drill: make this step's gradient NaN
    # A new run's parameters from another checkpoint, matched by path name and shape:
    # a workdir (another run's, or one written by `tjax import-hf`) or its checkpoints
    # folder; "" = none. Ignored once the run has a checkpoint of its own.
    c.train.init_from = ""
    c.train.init_from_step = -1  # -1 = its latest good checkpoint
    # Regexes searched in parameter path names (e.g. "encoder/"): only `trainable`
    # ones train ("" = all), `frozen` ones ("" = none) get no updates.
    c.train.trainable = ""
    c.train.frozen = ""

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.sequence = 1
    c.mesh.num_devices = 0  # 0 = every device; N = the first N
    # "data_parallel" | "fsdp" | "fsdp_tensor" | custom "batch:data+fsdp,embed:fsdp,..."
    c.mesh.rules = "data_parallel"
    return c


SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package, e.g. `translate_tiny`."""
    return sorted(
        name[:-3]
        for name in os.listdir(SHIPPED_CONFIGS)
        if name.endswith(".py") and not name.startswith("_")
    )


def config_file(name_or_path: str) -> str:
    """The file of a config given by path, or by shipped name (`translate_tiny[.py]`)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    names = shipped_configs()
    stem = name_or_path.removesuffix(".py")
    if stem in names:
        return os.path.join(SHIPPED_CONFIGS, stem + ".py")
    listed = ", ".join(names)
    if os.path.dirname(name_or_path):
        raise ConfigError(
            f"config file not found: {name_or_path} (shipped configs, by name: {listed})"
        )
    raise ConfigError(f"unknown config {name_or_path!r}: give a config file or one of {listed}")


def load_config(
    path: str, overrides: list[str] | tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a config (file path or shipped name), locks it, applies overrides."""
    path = config_file(path)
    spec = importlib.util.spec_from_file_location("_tjax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return apply_overrides(_run_get_config(module, path), overrides)


def _run_get_config(module, path: str) -> ml_collections.ConfigDict:
    """`module.get_config()`, which must return a config with every key of the base."""
    try:
        cfg = module.get_config()
    except Exception as e:  # the config file's own code: the user's to fix
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError(
            f"config file {path}: get_config() raised {type(e).__name__}: {first}"
        ) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {path}: get_config() returned {type(cfg).__name__}, "
            "expected an ml_collections.ConfigDict (e.g. from translation_base())"
        )
    task = task_class(cfg)
    missing = [k for k, _ in _leaves(task.base_config()) if _get(cfg, k) is _MISSING]
    if missing:
        raise ConfigError(
            f"config file {path}: get_config() lacks config key '{missing[0]}'"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f" (start from {task.base_config_name})"
        )
    return cfg


def task_class(cfg: ml_collections.ConfigDict):
    """The Task class a run config names (`task`; a config without one is a translation run)."""
    from transformer_jax.train.task import get_task_class

    name = _get(cfg, "task")
    return get_task_class("translation" if name is _MISSING else name)


def make_task(cfg: ml_collections.ConfigDict):
    """The task object of a run config."""
    return task_class(cfg)(cfg)


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: list[str] | tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """Locks cfg, applies `key=value` overrides with the fields' own types, validates."""
    cfg.lock()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"config override {item!r} must look like key=value")
        set_key(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.append(name)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, name + "."))
    return keys


def set_key(cfg: ml_collections.ConfigDict, dotted: str, raw: Any) -> None:
    """Sets cfg.<dotted> from a string (or value), converting to the existing type."""
    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(dotted, _all_keys(cfg), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}{hint}")
        if i < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{dotted}' is a group; set one of its fields")
    value = _convert(dotted, old, raw)
    with node.unlocked():
        node[parts[-1]] = value


def _convert(key: str, old: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        if isinstance(old, bool):
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(old, int):
            return int(float(text)) if "e" in text.lower() else int(text)
        if isinstance(old, float):
            return float(text)
        if isinstance(old, str):
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, OverflowError):  # OverflowError: "1e999" for an int
        raise ConfigError(f"config key '{key}' expects {type(old).__name__}, got {raw!r}") from None


_MISSING = object()
# Every int a config holds fits in int32: the step counter is int32 on device, and no
# size, count or seed needs more (this also refuses `1e99`).
INT_LIMIT = 2**31
# Floats reach the device as float32: a larger one is inf there.
FLOAT32_MAX = 3.4028234663852886e38
CHOICES: dict[str, tuple[str, ...]] = {
    "model.attention_impl": ATTENTION_IMPLEMENTATIONS,
    "model.remat": REMAT_POLICIES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "optimizer.schedule": ("rsqrt", "cosine", "linear", "constant"),
    "train.on_nonfinite": ("stop", "skip"),
}


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _leaves(cfg: ml_collections.ConfigDict, prefix: str = ""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _shown(value: Any) -> str:
    """repr, but a huge int (e.g. from `1e99`) in a few characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        try:
            return f"{float(value):.3g}"
        except OverflowError:
            return f"~2**{value.bit_length()}"
    return repr(value)


def _type_name(value: Any) -> str:
    return "float" if isinstance(value, float) else type(value).__name__


def _is_regex(value: Any) -> bool:
    import re

    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return True


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks every key a user can set (type, range, choice); each error names the key.

    Runs before anything reads or writes a workdir. A key the config lacks (an
    older run's saved config) is not checked.
    """

    def fail(key: str, why: str) -> NoReturn:
        raise ConfigError(f"config key '{key}'={_shown(_get(cfg, key))}: {why}")

    def need(key: str, ok, why: str) -> None:
        value = _get(cfg, key)
        if value is not _MISSING and not ok(value):
            fail(key, why)

    task = task_class(cfg)  # an unknown task is a ConfigError listing the known ones
    base = dict(_leaves(task.base_config()))
    for key, value in _leaves(cfg):
        want = base.get(key, value)
        if isinstance(want, bool) != isinstance(value, bool) or not isinstance(
            value, (float, int) if isinstance(want, float) else type(want)
        ):
            fail(key, f"expects {_type_name(want)}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
            fail(key, "must be below 2**31" if value > 0 else "must be above -2**31")
        if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:  # also nan
            fail(key, "must be a finite number (float32: at most 3.4e38 in size)")
    for key, choices in CHOICES.items():
        need(key, lambda v, c=choices: v in c, f"choose one of {', '.join(choices)}")

    def at_least(low):
        return lambda v: v >= low

    def in_01(v):  # [0, 1)
        return 0.0 <= v < 1.0

    need("seed", at_least(0), "must be >= 0")
    for key in ("name", "train_split", "eval_split", "test_split"):
        need(f"data.{key}", lambda v: bool(v.strip()), "must not be empty")
    need("data.max_length", at_least(2), "must be >= 2")
    max_length = _get(cfg, "data.max_length")
    for key in ("tokens_per_batch", "eval_tokens_per_batch"):
        need(
            f"data.{key}",
            lambda v: max_length is _MISSING or v >= max_length,
            f"must be >= data.max_length={max_length}",
        )

    need("model.dropout_rate", in_01, "must be in [0, 1)")

    for key in ("b1", "b2"):
        need(f"optimizer.{key}", in_01, "must be in [0, 1)")
    need("optimizer.eps", lambda v: v > 0, "must be > 0")
    need("optimizer.lr_scale", lambda v: v > 0, "must be positive")
    if _get(cfg, "optimizer.schedule") in ("cosine", "linear"):
        need("optimizer.warmup_steps", at_least(0), "must be >= 0")
        need("optimizer.peak_lr", lambda v: v > 0, "must be positive")
        need("optimizer.decay_steps", at_least(0), "must be >= 0 (0 = train.num_steps)")
        need("optimizer.final_lr_fraction", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
        warmup = _get(cfg, "optimizer.warmup_steps")
        if _get(cfg, "optimizer.decay_steps") == 0:
            need(
                "train.num_steps",
                lambda v: warmup is _MISSING or v > warmup,
                f"must be > optimizer.warmup_steps={warmup} (the decay ends at "
                "train.num_steps), or set optimizer.decay_steps",
            )
        else:
            need(
                "optimizer.decay_steps",
                lambda v: warmup is _MISSING or v > warmup,
                f"must be > optimizer.warmup_steps={warmup} (or 0 = train.num_steps)",
            )
    else:
        need("optimizer.warmup_steps", at_least(1), "must be >= 1")
    need("optimizer.grad_clip_norm", at_least(0), "must be >= 0 (0 = off)")
    need("optimizer.weight_decay", at_least(0), "must be >= 0")

    need("train.num_steps", at_least(0), "must be >= 0")
    need("train.label_smoothing", in_01, "must be in [0, 1)")
    for key in (
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "grad_accum_steps",
    ):
        need(f"train.{key}", at_least(1), "must be >= 1")
    need("train.eval_batches", at_least(0), "must be >= 0 (0 = the whole split)")
    need("train.inject_nonfinite_step", at_least(-1), "must be >= 0, or -1 (off)")
    need("train.init_from_step", at_least(-1), "must be >= 0, or -1 (the latest)")
    for key in ("train.trainable", "train.frozen"):
        need(key, _is_regex, "is not a valid regular expression")

    for axis in ("data", "fsdp", "tensor", "sequence"):
        need(f"mesh.{axis}", lambda v: v >= 1 or v == -1, "must be >= 1, or -1 (the rest)")
    rest = [
        f"mesh.{a}" for a in ("data", "fsdp", "tensor", "sequence") if _get(cfg, f"mesh.{a}") == -1
    ]
    if len(rest) > 1:
        fail(rest[1], f"at most one mesh axis may be -1 ({rest[0]} is -1 too)")
    need("mesh.num_devices", at_least(0), "must be >= 0 (0 = every device)")
    rules = _get(cfg, "mesh.rules")
    if rules is not _MISSING:
        from transformer_jax.train.sharding import rules_for

        try:
            rules_for(rules)
        except ValueError as e:
            fail("mesh.rules", str(e).splitlines()[0] if str(e) else "invalid")
    task.validate_config(cfg)


def checker(cfg: ml_collections.ConfigDict):
    """(need, get) for a task's `validate_config`.

    `need(key, ok, why)` raises a one-line ConfigError naming the key when the
    config holds it and `ok(value)` is false; `get(key)` is its value (None if absent).
    """

    def need(key: str, ok, why: str) -> None:
        value = _get(cfg, key)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"config key '{key}'={_shown(value)}: {why}")

    def get(key: str):
        value = _get(cfg, key)
        return None if value is _MISSING else value

    return need, get


def override_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The keys of `key=value` overrides, in order, each once."""
    keys: list[str] = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key and key not in keys:
            keys.append(key)
    return keys


def format_config(
    cfg: ml_collections.ConfigDict,
    overrides: list[str] | tuple[str, ...] = (),
    source: str | None = None,
) -> str:
    """The config one key a line (`a.b = value`, sorted), the overridden keys marked `*`."""
    marked = set(override_keys(overrides))
    title = "config" + (f" {source}" if source else "")
    if marked:
        title += " (* = overridden on the command line)"
    lines = [f"{title}:"]
    for key, value in sorted(_leaves(cfg)):
        lines.append(f"  {key} = {_shown(value)}" + (" *" if key in marked else ""))
    return "\n".join(lines)
