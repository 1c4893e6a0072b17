"""The models Gemma Desktop can run, in one table.

Mirrors the seed module's allow-list, VRAM and disk floors and E4B -> E2B
fallback. Adding a variant is adding one :class:`Variant` to ``VARIANTS``.

Each Gemma 4 variant also records its published figures (:class:`PublishedModel`):
the numbers of its ``config.json`` that decide its memory (layers, heads, head
sizes, sliding window, KV sharing, per-layer embeddings) and its parameter
counts by part, so the memory estimate
(:mod:`gemma_desktop.core.machine.memory`) works before the model is
downloaded and without network. The seed's floors stay the minimums.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gemma_desktop.core.errors import UnsupportedVariantError

Family = Literal["gemma-4", "bundled"]

DEFAULT_MODEL_ID = "google/gemma-4-E4B-it"
DEFAULT_DEPLOYMENT_NAME = "gemma-local"
BUNDLED_MODEL_ID = "bundled/gemma-3-270m"
#: Gemma 4 E2B/E4B read images and audio besides text.
GEMMA4_INPUTS = frozenset({"image", "audio"})


@dataclass(frozen=True)
class PublishedWeights:
    """Parameter counts of a variant by part, as vLLM loads them (KV-shared layers
    without their K/V projections), and the size of the published weight files."""

    decoder: int
    embeddings: int
    ple: int
    vision: int
    audio: int
    #: Bytes of the weight files on the Hub (they also hold tensors vLLM drops).
    checkpoint_bytes: int


@dataclass(frozen=True)
class PublishedModel:
    """What the memory estimate needs of a model that is not downloaded: the memory-relevant
    part of its published ``config.json`` and its parameter counts."""

    config: Mapping[str, Any]
    weights: PublishedWeights
    #: Where the figures come from, for the window ("the published config").
    source: str = "the published config and file sizes"


def _gemma4_config(
    *,
    hidden: int,
    layers: int,
    kv_heads: int,
    shared: int,
    intermediate: int,
    double_wide: bool,
    full_every: int,
) -> dict[str, Any]:
    pattern = ["sliding_attention"] * (full_every - 1) + ["full_attention"]
    return {
        "model_type": "gemma4",
        "text_config": {
            "model_type": "gemma4_text",
            "dtype": "bfloat16",
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 8,
            "num_key_value_heads": kv_heads,
            "head_dim": 256,
            "global_head_dim": 512,
            "sliding_window": 512,
            "layer_types": (pattern * layers)[:layers],
            "num_kv_shared_layers": shared,
            "hidden_size_per_layer_input": 256,
            "vocab_size": 262_144,
            "vocab_size_per_layer_input": 262_144,
            "intermediate_size": intermediate,
            "use_double_wide_mlp": double_wide,
            "attention_k_eq_v": False,
            "max_position_embeddings": 131_072,
            "tie_word_embeddings": True,
        },
        "vision_config": {"model_type": "gemma4_vision", "hidden_size": 768},
        "audio_config": {"model_type": "gemma4_audio", "hidden_size": 1024},
    }


#: google/gemma-4-E2B(-it): 35 layers (4 sliding : 1 full), hidden 1536, 1 KV head, the
#: last 20 layers KV-shared, double-wide MLP in those; 5,104,297,504 parameters in bf16.
#: The file size is derived, not published: 2 bytes × (those parameters + the shared
#: layers' K/V, 18.9 M parameters vLLM skips); a third-party download reports 10.2 GB.
GEMMA4_E2B = PublishedModel(
    _gemma4_config(
        hidden=1536,
        layers=35,
        kv_heads=1,
        shared=20,
        intermediate=6144,
        double_wide=True,
        full_every=5,
    ),
    PublishedWeights(
        decoder=1_863_341_568,
        embeddings=416_417_536,
        ple=2_348_810_240,
        vision=168_544_256,
        audio=307_183_904,
        checkpoint_bytes=10_246_343_744,
    ),
)
#: google/gemma-4-E4B(-it): 42 layers (5 sliding : 1 full), hidden 2560, 2 KV heads, the
#: last 18 layers KV-shared; 7,941,100,832 parameters in bf16; one 15,992,595,884-byte
#: model.safetensors (it also holds the shared layers' K/V, 55.1 M parameters).
GEMMA4_E4B = PublishedModel(
    _gemma4_config(
        hidden=2560,
        layers=42,
        kv_heads=2,
        shared=18,
        intermediate=10_240,
        double_wide=False,
        full_every=6,
    ),
    PublishedWeights(
        decoder=3_945_824_512,
        embeddings=698_616_576,
        ple=2_818_572_288,
        vision=169_330_688,
        audio=308_756_768,
        checkpoint_bytes=15_992_595_884,
    ),
)


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
    #: The published figures the memory estimate uses before the model is downloaded.
    published: PublishedModel | None = None

    @property
    def download_gb(self) -> float:
        """The download's size in GB (GiB): the published weight files, else the seed's figure."""
        if self.published is not None:
            return max(self.min_disk_gb, self.published.weights.checkpoint_bytes / 1024**3)
        return self.min_disk_gb

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
        published=GEMMA4_E2B,
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
        published=GEMMA4_E2B,
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
        published=GEMMA4_E4B,
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
        published=GEMMA4_E4B,
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
