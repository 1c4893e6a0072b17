"""The models Gemma Desktop can run, in one table.

Mirrors the seed module's allow-list, VRAM and disk floors and E4B -> E2B
fallback. Adding a variant is adding one :class:`Variant` to ``VARIANTS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from gemma_desktop.core.errors import UnsupportedVariantError

Family = Literal["gemma-4", "bundled"]

DEFAULT_MODEL_ID = "google/gemma-4-E4B-it"
DEFAULT_DEPLOYMENT_NAME = "gemma-local"
BUNDLED_MODEL_ID = "bundled/gemma-3-270m"
#: Gemma 4 E2B/E4B read images and audio besides text.
GEMMA4_INPUTS = frozenset({"image", "audio"})


@dataclass(frozen=True)
class Variant:
    """One runnable model.

    ``min_vram_gb`` is the seed's recommended fp16 floor (``None`` for a model
    that runs on the CPU); ``min_disk_gb`` the approximate size after download.
    ``inputs`` and ``thinking`` are what the model itself can take and do; an
    engine declares what it offers of them once running (text-only mode, a remote
    server) in :class:`~gemma_desktop.core.engine.protocol.EngineAbilities`.
    """

    id: str
    label: str
    family: Family
    parameters: str
    min_vram_gb: float | None
    min_disk_gb: float
    fallback: str | None
    instruction_tuned: bool
    gated: bool
    description: str
    #: What a message may carry besides text: ``"image"``, ``"audio"``.
    inputs: frozenset[str] = frozenset()
    #: Whether the model can think before it answers (Gemma 4's ``-it`` chat template).
    thinking: bool = False

    @property
    def needs_gpu(self) -> bool:
        return self.min_vram_gb is not None

    @property
    def is_bundled(self) -> bool:
        return self.family == "bundled"

    @property
    def hub_url(self) -> str | None:
        return None if self.is_bundled else f"https://huggingface.co/{self.id}"


VARIANTS: tuple[Variant, ...] = (
    Variant(
        id="google/gemma-4-E2B",
        label="Gemma 4 E2B",
        family="gemma-4",
        parameters="2B effective",
        min_vram_gb=2.5,
        min_disk_gb=4.0,
        fallback=None,
        instruction_tuned=False,
        gated=True,
        description="Smallest Gemma 4, base model: text continuation.",
        inputs=GEMMA4_INPUTS,
    ),
    Variant(
        id="google/gemma-4-E2B-it",
        label="Gemma 4 E2B-it",
        family="gemma-4",
        parameters="2B effective",
        min_vram_gb=2.5,
        min_disk_gb=4.0,
        fallback=None,
        instruction_tuned=True,
        gated=True,
        description="Smallest Gemma 4, tuned for chat. Good on 8 GB cards.",
        inputs=GEMMA4_INPUTS,
        thinking=True,
    ),
    Variant(
        id="google/gemma-4-E4B",
        label="Gemma 4 E4B",
        family="gemma-4",
        parameters="4B effective",
        min_vram_gb=4.5,
        min_disk_gb=7.0,
        fallback="google/gemma-4-E2B",
        instruction_tuned=False,
        gated=True,
        description="Larger Gemma 4, base model: text continuation.",
        inputs=GEMMA4_INPUTS,
    ),
    Variant(
        id="google/gemma-4-E4B-it",
        label="Gemma 4 E4B-it",
        family="gemma-4",
        parameters="4B effective",
        min_vram_gb=4.5,
        min_disk_gb=7.0,
        fallback="google/gemma-4-E2B-it",
        instruction_tuned=True,
        gated=True,
        description="Larger Gemma 4, tuned for chat. The default on capable GPUs.",
        inputs=GEMMA4_INPUTS,
        thinking=True,
    ),
    Variant(
        id=BUNDLED_MODEL_ID,
        label="Gemma 3 270M (bundled)",
        family="bundled",
        parameters="270M",
        min_vram_gb=None,
        min_disk_gb=0.6,
        fallback=None,
        instruction_tuned=False,
        gated=False,
        description=(
            "Small base Gemma 3 shipped with the app. Runs on the CPU anywhere; "
            "continues text rather than following instructions."
        ),
    ),
)

_BY_ID = {v.id: v for v in VARIANTS}

#: The seed's allow-list: the Gemma 4 variants only.
SUPPORTED_VARIANTS: tuple[str, ...] = tuple(v.id for v in VARIANTS if v.family == "gemma-4")


def min_vram_gb(model_id: str) -> float | None:
    """Recommended VRAM floor in GB (fp16) for a Gemma 4 variant, else ``None``."""
    variant = _BY_ID.get(model_id)
    return variant.min_vram_gb if variant else None


def min_disk_gb(model_id: str) -> float | None:
    """Approximate on-disk size in GB after download, else ``None``."""
    variant = _BY_ID.get(model_id)
    return variant.min_disk_gb if variant and not variant.is_bundled else None


def fallback_variant(model_id: str) -> str | None:
    """The next smaller variant for an E4B model; ``None`` for E2B and others."""
    variant = _BY_ID.get(model_id)
    return variant.fallback if variant else None


def supported_list() -> str:
    return ", ".join(v.id for v in VARIANTS)


def validate_variant(model_id: str) -> Variant:
    """Return the catalog entry for ``model_id`` or fail with the supported list."""
    variant = _BY_ID.get(model_id)
    if variant is None:
        raise UnsupportedVariantError(
            f"unsupported Gemma variant `{model_id}` — supported: {supported_list()}",
            "Pick one of the supported variants (ATOMR_INFER_GEMMA_MODEL or the variant picker).",
        )
    return variant


class VariantCatalog:
    """Read access to the variant table, for code that receives it as a service."""

    def __init__(self, variants: tuple[Variant, ...] = VARIANTS) -> None:
        self._variants = variants
        self._by_id = {v.id: v for v in variants}

    def __iter__(self) -> Iterator[Variant]:
        return iter(self._variants)

    def __len__(self) -> int:
        return len(self._variants)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def get(self, model_id: str) -> Variant:
        """The entry for ``model_id``; raises :class:`UnsupportedVariantError`."""
        try:
            return self._by_id[model_id]
        except KeyError:
            return validate_variant(model_id)

    @property
    def bundled(self) -> Variant:
        return self._by_id[BUNDLED_MODEL_ID]

    @property
    def default(self) -> Variant:
        return self._by_id[DEFAULT_MODEL_ID]
