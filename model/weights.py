"""A weight set against the architecture: the model a state implies, and the check of a safetensors
file's header against it, before anything is allocated.

``assemble`` builds the backbone of a ``ViTConfig`` and gives it what the state holds besides: the
RL agent (``agent.*``) and the DyCE exit heads (``exits.*``). ``check_header`` reads only the
header of a ``.safetensors`` file (names and shapes), assembles the same model on the ``meta``
device (no storage), and refuses any tensor that is missing, unexpected or of the wrong shape.
A bundle.json that claims a width or depth its weights do not hold is thus refused at the cost of
reading a header, not of allocating the model it claims.

Before the meta model is built, the number of layers the header holds is compared with the
architecture's depth: a claimed depth of 100,000 would otherwise cost 100,000 meta blocks of
Python objects. Past that check the meta model is no larger than the header.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from skipvit.model.config import ViTConfig
from skipvit.model.exits import ExitSet, attach_exits
from skipvit.model.gates import SkipAgent
from skipvit.model.vit import AdaptiveViT, build_model

Shapes = dict[str, tuple[int, ...]]
# Module lists with one entry per layer: (prefix, whether the state may lack it altogether)
PER_LAYER = (("blocks", False), ("agent.gates", True), ("agent.baselines", True))


class WeightsError(ValueError):
    """A weight set does not fit the architecture (or is not a readable safetensors file)."""


def assemble(cfg: ViTConfig, state: dict[str, Tensor]) -> AdaptiveViT:
    """The model ``state`` is meant for: the backbone, plus the agent and exit heads it holds.
    Not loaded: the caller loads ``state`` into it."""
    model = build_model(cfg)
    if any(k.startswith("agent.") for k in state):
        model.attach_agent(SkipAgent(cfg.dim, cfg.depth, SkipAgent.hidden_from_state(state)))
    exits = ExitSet.from_state(cfg, state)  # DyCE exit heads, when the set has them (ValueError)
    if exits is not None:
        attach_exits(model, exits)
    return model


def header_shapes(path: Path) -> Shapes:
    """Name -> shape of every tensor in a safetensors file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            return {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None


def check_depth(cfg: ViTConfig, shapes: Shapes) -> None:
    """The layers the header holds match the architecture's depth (before anything is built)."""
    for prefix, optional in PER_LAYER:
        held = {k[len(prefix) + 1 :].split(".", 1)[0] for k in shapes if k.startswith(prefix + ".")}
        if optional and not held:
            continue
        want = 1 if prefix == "blocks" and cfg.shared_layers else cfg.depth
        if len(held) != want:
            raise WeightsError(
                f"the architecture implies {want} entries of {prefix}, the weights hold {len(held)}; "
                "Hint: the architecture in bundle.json does not describe these weights"
            )


def check_header(cfg: ViTConfig, path: Path) -> None:
    """``WeightsError`` unless the file holds exactly the tensors ``cfg`` implies, with their shapes."""
    shapes = header_shapes(path)
    check_depth(cfg, shapes)
    with torch.device("meta"):
        state = {name: torch.empty(shape) for name, shape in shapes.items()}
        try:
            model = assemble(cfg, state)
        except (ValueError, KeyError) as e:
            raise WeightsError(str(e)) from None
    want = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(set(shapes) - set(want))
    wrong = [n for n in want if n in shapes and shapes[n] != want[n]]
    hint = "Hint: the architecture in bundle.json does not describe these weights"
    if missing:
        raise WeightsError(
            f"lacks {len(missing)} tensors the architecture implies, e.g. {missing[0]}; {hint}"
        )
    if unexpected:
        raise WeightsError(
            f"has {len(unexpected)} tensors the model does not know, e.g. {unexpected[0]}; {hint}"
        )
    if wrong:
        n = wrong[0]
        raise WeightsError(
            f"{n} has shape {list(shapes[n])}, the architecture implies {list(want[n])}; {hint}"
        )
