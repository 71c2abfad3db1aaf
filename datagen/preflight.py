"""What a build's backends need, checked before any work, in one place for `build` and `doctor`: which stages run a
learned model (and so can hold a GPU), and whether the matting backend and the captioner load."""

from __future__ import annotations

from datagen.config import BuildConfig
from datagen.scheduling import StageName
from datagen.stages import setup_error
from filters.clip import ClipChoice
from manifests.device import resolve_device
from manifests.errors import ConfigError


def learned_stages(config: BuildConfig, clip: ClipChoice) -> set[StageName]:
    """The stages whose backend is a learned model that can use a GPU."""
    from datagen.captioning import uses_gpu as captioner_uses_gpu
    from datagen.matting import uses_gpu as matting_uses_gpu

    learned = set()
    if matting_uses_gpu(config.matting):
        learned.add(StageName.MATTE)
    if captioner_uses_gpu(config.captioner):
        learned.add(StageName.CAPTION)
    if clip.weights is not None:
        learned.add(StageName.CLIP)
    return learned


def load_backend(stage: StageName, config: BuildConfig, device: str) -> object:
    """The learned backend of a stage (matting, captioner), loaded as the stage will load it on `device`."""
    from datagen.captioning import load_captioner
    from datagen.matting import load_matting

    if stage is StageName.MATTE:
        return load_matting(config.matting, device)  # each backend checks the device it is given
    return load_captioner(config.captioner, device)


def preflight(config: BuildConfig, on_cluster: bool = False) -> None:
    """`build`'s check before any work: the device, and that the matting backend and the captioner load. A wrong
    spec is a `ConfigError`, a model that does not load a `StageSetupError`: one line either way. On a cluster the
    GPUs are the workers', so the specs are only loaded on the CPU here (`doctor --ray-address` checks the rest)."""
    if not on_cluster:
        resolve_device(config.device)
    for stage in (StageName.MATTE, StageName.CAPTION):
        try:
            load_backend(stage, config, "cpu" if on_cluster else config.device)
        except ConfigError:
            raise
        except Exception as exc:  # whatever the library raises, it is this stage's setup that failed
            raise setup_error(stage, exc) from exc
