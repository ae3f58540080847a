"""Hugging Face ``config.json`` / ``preprocessor_config.json`` <-> ``ViTConfig``, labels, ``Preprocess``.

Supported: ``ViTForImageClassification``, ``DeiTForImageClassification`` (its distillation token
is in the sequence, its head reads CLS) and ``DeiTForImageClassificationWithTeacher`` (two heads,
logits averaged). All three are pre-norm ViTs with a learned position embedding, a CLS token and
a linear head after the final LayerNorm: exactly ``model.vit.AdaptiveViT`` with the config's
options. Anything else is refused, naming what is supported: another architecture (Swin, BEiT,
ConvNeXt, DINOv2, ...), or an option this model does not have (non-square images or patches, a
``head_dim`` other than hidden / heads, layer scale, register tokens, an activation outside
``ACTIVATION_NAMES``). Options that do not change a classifier's logits (``encoder_stride``,
the pooler's settings, ``initializer_range``) are ignored.
"""

from __future__ import annotations

from typing import Any

from skipvit.model.config import ViTConfig
from skipvit.model.preprocess import RESAMPLE, Preprocess

# architectures[0] -> (model_type, weight prefix, head: "cls" or "cls+distill")
ARCHITECTURES = {
    "ViTForImageClassification": ("vit", "vit", "cls"),
    "DeiTForImageClassification": ("deit", "deit", "cls"),
    "DeiTForImageClassificationWithTeacher": ("deit", "deit", "cls+distill"),
}
SUPPORTED = ", ".join(ARCHITECTURES)

# transformers' hidden_act -> model.config.ACTIVATIONS (gelu_new, gelu_fast and
# gelu_pytorch_tanh are the same tanh approximation, written three ways)
ACTIVATION_NAMES = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# model.config.ACTIVATIONS -> the hidden_act an export writes
EXPORT_ACTIVATION = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
}

# Options of related configs that change the function; refused when set (truthy / not default).
REFUSED_OPTIONS = {
    "layer_scale_init_value": "layer scale",
    "layerscale_value": "layer scale",
    "num_register_tokens": "register tokens",
    "use_swiglu_ffn": "a SwiGLU MLP",
    "use_mean_pooling": "mean pooling before the head",
    "use_relative_position_bias": "relative position bias",
    "use_shared_relative_position_bias": "relative position bias",
    "use_mask_token": "a mask token",
    "interpolate_pos_encoding": "interpolated position embeddings",
    "qk_norm": "query/key normalisation",
}


class ConfigError(ValueError):
    """A config this project cannot reproduce; the message says what is supported."""


def _square(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(
                f"{key} {value} is not square; Hint: only square images and patches are supported"
            )
        value = value[0]
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def architecture(config: dict[str, Any]) -> tuple[str, str, str]:
    """(architecture name, weight prefix, head kind) of a supported config.json, else ConfigError."""
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    if name not in ARCHITECTURES:
        what = f"architecture {name}" if name else f"model_type {config.get('model_type')!r}"
        raise ConfigError(
            f"{what} is not supported; Hint: supported are {SUPPORTED} (pre-norm ViTs with a CLS "
            "token and a linear head). Swin, BEiT, ConvNeXt, DINOv2 and other families are not."
        )
    model_type, prefix, head = ARCHITECTURES[name]
    if config.get("model_type", model_type) != model_type:
        raise ConfigError(
            f"{name} with model_type {config.get('model_type')!r}: expected {model_type!r}; "
            f"Hint: supported are {SUPPORTED}"
        )
    return name, prefix, head


def vit_config(config: dict[str, Any]) -> ViTConfig:
    """The ``ViTConfig`` that computes what transformers computes for ``config``."""
    name, _, head = architecture(config)
    for key, what in REFUSED_OPTIONS.items():
        if config.get(key):
            raise ConfigError(
                f"{key}={config[key]!r} ({what}) is not supported; Hint: supported are {SUPPORTED} as transformers defines them"
            )
    act = config.get("hidden_act", "gelu")
    if act not in ACTIVATION_NAMES:
        raise ConfigError(
            f"hidden_act {act!r} is not supported; Hint: supported are {', '.join(ACTIVATION_NAMES)}"
        )
    dim, heads = int(config.get("hidden_size", 768)), int(config.get("num_attention_heads", 12))
    if config.get("head_dim") not in (None, dim // heads) or dim % heads:
        raise ConfigError(
            f"head_dim {config.get('head_dim')} with hidden_size {dim} and {heads} heads: only "
            "hidden_size / num_attention_heads is supported"
        )
    image_size, patch_size = _square(config, "image_size", 224), _square(config, "patch_size", 16)
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    labels = class_names(config)
    try:
        return ViTConfig(
            image_size=image_size,
            in_channels=int(config.get("num_channels", 3)),
            patch_size=patch_size,
            dim=dim,
            depth=int(config.get("num_hidden_layers", 12)),
            heads=heads,
            mlp_ratio=int(config.get("intermediate_size", 3072)) / dim,
            mlp_dim=int(config.get("intermediate_size", 3072)),
            dropout=float(config.get("hidden_dropout_prob", 0.0)),
            attn_dropout=float(config.get("attention_probs_dropout_prob", 0.0)),
            num_classes=len(labels),
            qkv_bias=bool(config.get("qkv_bias", True)),
            ln_eps=float(config.get("layer_norm_eps", 1e-12)),
            activation=ACTIVATION_NAMES[act],
            distill_token=name.startswith("DeiT"),
            distill_head=head == "cls+distill",
        )
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def class_names(config: dict[str, Any]) -> list[str]:
    """The labels, in index order, from ``id2label`` (every index from 0 to n - 1 once)."""
    id2label = config.get("id2label") or {}
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (ValueError, AttributeError):
        raise ConfigError(f"id2label {id2label!r} does not map indices to labels") from None
    n = len(by_index)
    if n == 0 or set(by_index) != set(range(n)):
        raise ConfigError(
            f"id2label must name every class index from 0 once (got {sorted(by_index)[:10]}); "
            "Hint: a classifier saved with num_labels=0 has no head to import"
        )
    return [by_index[i] for i in range(n)]


def preprocess(pre: dict[str, Any], cfg: ViTConfig) -> tuple[Preprocess, list[str]]:
    """The bundle's ``Preprocess`` from preprocessor_config.json, and notes on what the server does
    otherwise (``model.preprocess``'s departures)."""
    notes = []
    channels = cfg.in_channels
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if pre.get("do_normalize", True):
        mean, std = pre.get("image_mean"), pre.get("image_std")
        if isinstance(mean, int | float):
            mean = [mean] * channels
        if isinstance(std, int | float):
            std = [std] * channels
        if not (isinstance(mean, list) and isinstance(std, list)):
            raise ConfigError("preprocessor_config.json: do_normalize without image_mean and image_std")
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(
                f"preprocessor_config.json: image_mean/image_std have {len(mean)}/{len(std)} values "
                f"for a model of {channels} channels; Hint: save an image processor made for this model"
            )
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    resample = pre.get("resample", 2)
    if resample not in RESAMPLE:
        raise ConfigError(f"preprocessor_config.json: resample {resample!r} is not a Pillow filter (0-5)")
    size = pre.get("size") or {}
    resize = None
    if pre.get("do_resize", True):
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        else:
            notes.append(
                f"size {size} keeps the aspect ratio; the server resizes straight to the model's size"
            )
    crop = None
    if pre.get("do_center_crop"):
        c = pre.get("crop_size") or {}
        c = {"height": c, "width": c} if isinstance(c, int) else c
        crop = (int(c.get("height", cfg.image_size)), int(c.get("width", cfg.image_size)))
    if crop is not None:
        if resize is not None and (crop[0] > resize[0] or crop[1] > resize[1]):
            notes.append(
                f"the processor crops {crop} from a {resize} image (transformers pads); not cropped here"
            )
        elif crop != (cfg.image_size, cfg.image_size):
            notes.append(f"the processor crops {crop}, the model takes {cfg.image_size}: the crop is resized")
    elif resize is not None and resize != (cfg.image_size, cfg.image_size):
        notes.append(f"the processor resizes to {resize}, the model takes {cfg.image_size}")
    kind = pre.get("image_processor_type", "an image processor")
    return (
        Preprocess(
            source=f"preprocessor_config.json ({kind})",
            resample=RESAMPLE[resample],
            resize=resize,
            center_crop=crop,
            rescale_factor=rescale,
            image_mean=tuple(float(m) for m in mean),
            image_std=tuple(float(s) for s in std),
        ),
        notes,
    )


# ---------------------------------------------------------------- export


def hf_config(cfg: ViTConfig, classes: list[str]) -> dict[str, Any]:
    """config.json for the transformers model that computes what ``cfg`` computes."""
    name = (
        "DeiTForImageClassificationWithTeacher"
        if cfg.distill_head
        else "DeiTForImageClassification"
        if cfg.distill_token
        else "ViTForImageClassification"
    )
    return {
        "architectures": [name],
        "model_type": ARCHITECTURES[name][0],
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.mlp_hidden,
        "hidden_act": EXPORT_ACTIVATION[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "layer_norm_eps": cfg.ln_eps,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_channels,
        "qkv_bias": cfg.qkv_bias,
        "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)},
        "dtype": "float32",
    }


def hf_preprocessor(cfg: ViTConfig, dataset: dict[str, Any], pre: Preprocess | None = None) -> dict[str, Any]:
    """preprocessor_config.json of a ViT image processor that makes the input this project's input
    paths make: resize to the image size (bilinear), x / 255, then the dataset's mean and std. For
    an imported bundle (``pre`` with its own mean and std), the processor it came with."""
    out = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": cfg.image_size, "width": cfg.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(m) for m in dataset["mean"]],
        "image_std": [float(s) for s in dataset["std"]],
    }
    if pre is None or pre.image_mean is None or pre.image_std is None:
        return out
    resample = {name: value for value, name in RESAMPLE.items()}[pre.resample]
    height, width = pre.resize or (cfg.image_size, cfg.image_size)
    out |= {
        "size": {"height": height, "width": width},
        "resample": resample,
        "rescale_factor": pre.rescale_factor,
        "image_mean": list(pre.image_mean),
        "image_std": list(pre.image_std),
    }
    if pre.center_crop is not None:
        out |= {
            "image_processor_type": "DeiTImageProcessor",
            "do_center_crop": True,
            "crop_size": {"height": pre.center_crop[0], "width": pre.center_crop[1]},
        }
    return out
