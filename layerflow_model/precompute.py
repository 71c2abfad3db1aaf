"""The precompute pass: every clip crop and prompt a training run can draw, through the frozen encoders once, into
the encoder cache (VAE posteriors keyed by `Pick.key`, T5 embeddings keyed by the prompt), so the steps read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from layerflow_model.cache import EncoderCache
from layerflow_model.components import Components
from layerflow_model.data import BatchPlan, ClipStore, clips_of
from layerflow_model.layout import prompts_for


@dataclass(frozen=True)
class Precomputed:
    clips: int  # distinct clips the plan can draw
    clips_encoded: int  # of them, encoded now (the rest were in the cache already)
    prompts: int
    prompts_encoded: int

    def describe(self) -> str:
        return (f"precompute: {self.clips_encoded} of {self.clips} clips and {self.prompts_encoded} of "
                f"{self.prompts} prompts encoded (the rest were cached)")


def precompute(parts: Components, plan: BatchPlan, store: ClipStore, latent_cache: EncoderCache,
               text_cache: EncoderCache, chunk: int = 4, rank: int = 0, world_size: int = 1,
               progress: bool = True) -> Precomputed:
    """Encode what is not cached yet, `chunk` clips (or 8 * `chunk` prompts) at a time; with several workers each
    rank takes every `world_size`-th sample."""
    config = parts.config
    rows = plan.rows()[rank::world_size]
    picks = [pick for row in rows for pick in plan.crops(row)]
    todo = [pick for pick in picks if not latent_cache.has(pick.key(config))]
    for i in tqdm(range(0, len(todo), chunk), desc="precompute clips", unit="batch", disable=not progress):
        batch = todo[i:i + chunk]
        posterior = parts.posterior(clips_of(batch, store, config))  # (b, K, S*T', C, h, w)
        for pick, value in zip(batch, posterior):
            latent_cache.put(pick.key(config), value)
    prompts = sorted({p for row in rows for task in plan.tasks for p in prompts_for(row.captions, task)})
    missing = [p for p in prompts if not text_cache.has(p)]
    step = 8 * chunk
    for i in range(0, len(missing), step):
        texts = missing[i:i + step]
        for text, value in zip(texts, parts.text.encode(texts)):
            text_cache.put(text, value)
    return Precomputed(len(picks), len(todo), len(prompts), len(missing))
