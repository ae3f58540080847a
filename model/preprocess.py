"""How an image becomes the model's input, for a bundle whose model came from elsewhere.

Every input path of this project (the server's engine, evaluation, the searches, training) turns a
uint8 image ``x`` into ``(x / 255 - mean) / std`` with the per-channel ``mean`` and ``std`` of the
bundle's ``dataset`` section. A Hugging Face image processor computes ``(x * rescale_factor -
image_mean) / image_std`` instead (``do_rescale`` off: a factor of 1; ``do_normalize`` off: mean 0,
std 1). The two agree exactly when

    mean = image_mean / (255 * rescale_factor),    std = image_std / (255 * rescale_factor)

so an imported bundle stores those folded values in ``dataset.mean`` / ``dataset.std`` and every
input path, the server's included, computes what transformers computes, unchanged.

The optional ``preprocess`` section of bundle.json keeps what was read (the processor's own
numbers, its resize, resample and crop) so that the fold can be checked on load and undone on
export. A bundle without the section is one of this project's own: ``Preprocess()`` describes it
(resize straight to the image size, bilinear; mean and std are the dataset's).

The server and the ``folder`` dataset bring an image to the model's size as the processor does
(``fit_image``): where the processor crops (DeiT's resizes to 256 x 256, then cuts 224 x 224 from the
middle), resize to ``resize`` with ``resample``, then cut ``center_crop`` from the middle exactly
where transformers cuts it; otherwise resize straight to the model's size. They convert to
greyscale or RGB as the bundle's channels say. Departures: the server box-reduces a large upload by
a whole factor before that resize (its memory bound), and a processor that keeps the aspect ratio
(``size: {"shortest_edge": n}``) is not followed: the image is resized straight to the model's size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Pillow's resampling filters, by their enum value (what preprocessor_config.json records)
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def pillow_filter(name: str):
    """Pillow's resampling filter called ``name`` (one of ``RESAMPLE``'s names), for the server's
    decode and the folder dataset alike."""
    from PIL import Image

    for code, known in RESAMPLE.items():
        if known == name:
            return Image.Resampling(code)
    raise ValueError(f"resample {name!r} is unknown; Hint: use one of {', '.join(RESAMPLE.values())}")


def fit_image(
    img,
    size: int,
    resample: str = "bilinear",
    resize: tuple[int, int] | None = None,
    center_crop: tuple[int, int] | None = None,
):
    """A Pillow image brought to ``size`` x ``size`` (module docstring): with ``center_crop``, first
    resized to ``resize`` (H, W; None: kept) and cut from the middle (top = (H - h) // 2, left =
    (W - w) // 2, as transformers' ``center_crop``); then resized to ``size`` where it is not that
    already. An image already at the target size is never resampled."""
    method = pillow_filter(resample)
    if center_crop is not None:
        height, width = resize or (img.height, img.width)
        if img.size != (width, height):
            img = img.resize((width, height), method)
        crop_h, crop_w = center_crop
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        if top >= 0 and left >= 0:
            img = img.crop((left, top, left + crop_w, top + crop_h))
    if img.size != (size, size):
        img = img.resize((size, size), method)
    return img


class PreprocessError(ValueError):
    """A preprocess section that is malformed or disagrees with the bundle's dataset section."""


@dataclass(frozen=True)
class Preprocess:
    source: str = ""  # where the settings came from, e.g. "preprocessor_config.json (ViTImageProcessor)"
    resample: str = "bilinear"  # one of RESAMPLE's names
    resize: tuple[int, int] | None = None  # (H, W) before a crop; None: straight to the image size
    center_crop: tuple[int, int] | None = None  # (H, W) cut from the middle after the resize
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] | None = None  # after rescaling; None: the dataset's mean, as is
    image_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE.values():
            raise PreprocessError(
                f"resample {self.resample!r} is unknown; Hint: use one of {', '.join(RESAMPLE.values())}"
            )
        if not self.rescale_factor > 0:
            raise PreprocessError(f"rescale_factor must be > 0, got {self.rescale_factor}")
        if (self.image_mean is None) != (self.image_std is None):
            raise PreprocessError("image_mean and image_std come together (or neither)")
        if self.image_std is not None and min(self.image_std) <= 0:
            raise PreprocessError(f"image_std must be > 0, got {list(self.image_std)}")

    def folded(self) -> tuple[list[float], list[float]]:
        """``image_mean`` and ``image_std`` in the units of ``x / 255`` (the module docstring)."""
        if self.image_mean is None or self.image_std is None:
            raise PreprocessError("no image_mean / image_std to fold")
        unit = 255.0 * self.rescale_factor
        return [m / unit for m in self.image_mean], [s / unit for s in self.image_std]

    def check(self, dataset: dict[str, Any]) -> None:
        """``PreprocessError`` unless the dataset section's mean and std are this section's fold."""
        if self.image_mean is None:
            return
        mean, std = self.folded()
        channels = int(dataset.get("channels", len(mean)))
        if len(mean) != channels:
            raise PreprocessError(f"image_mean has {len(mean)} values for {channels} channels")
        close = all(
            abs(a - b) <= 1e-9 * max(1.0, abs(b))
            for a, b in zip([*dataset["mean"], *dataset["std"]], [*mean, *std], strict=True)
        )
        if not close:
            raise PreprocessError(
                f"dataset mean/std {dataset['mean']}/{dataset['std']} are not the preprocess "
                f"section's {mean}/{std}; Hint: re-run the command that wrote the bundle"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("resize", "center_crop", "image_mean", "image_std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PreprocessError(f"unknown preprocess keys: {sorted(unknown)}")
        d = dict(data)
        for key in ("resize", "center_crop", "image_mean", "image_std"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)
