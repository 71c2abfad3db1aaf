"""Held-out decomposition of the `toy` model's base stage under one setting: the sweep behind the toy preset's
`given_projection` and `snr_shift` (docs/toy-model.md).

    python bench/toy_sweep.py pack DATASET PACK.pt            # decode a dataset's clips once (32x32, every frame)
    python bench/toy_sweep.py run NAME STEPS PACK.pt [key=value ...]

`run` trains the base stage as `reproduce` does (video kinds, tasks drawn with weights generate 1, decompose `dw`,
fg2bg 1, bg2fg 1, random crops, and the trainer's own prompt dropout, warm-up, AdamW betas, gradient clipping and
EMA) from the clips decoded once by `pack`, not from the media at every step. Every `STEPS / evals` steps
it samples decomposition of every held-out clip (8 DDIM steps, cfg 3, `nseeds` seeds, EMA weights) and prints one
JSON line: the held-out and training alpha IoU and the held-out background PSNR inside the object. key=value sets
a `ModelConfig` field of the toy preset (`given_projection=False`, `depth=6`, `snr_shift=2.0`), or `lr`, `bs`,
`seed`, `dw`, `evals`, `nseeds`. `reproduce` measures the end-to-end figure; this isolates one setting.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerflow_model.components import build  # noqa: E402
from layerflow_model.config import Stage, TrainConfig, preset  # noqa: E402
from layerflow_model.diffusion import Diffusion, autocast, sample  # noqa: E402
from layerflow_model.layout import Task, condition_mask, pack, prompts_for, unpack  # noqa: E402
from layerflow_model.train import ADAM_BETAS, ema_decay, learning_rate, prompt_drop  # noqa: E402
from manifests.layers import Layer  # noqa: E402
from manifests.metrics import alpha_iou, psnr  # noqa: E402

SIZE = 32  # the toy preset's


def pack_dataset(dataset: str, out: str) -> None:
    from layerflow_model.data import ClipStore, read_rows

    packed = {}
    for split in ("train", "val"):
        store = ClipStore(dataset, SIZE, SIZE)
        packed[split] = [{"id": r.sample_id, "kind": r.kind.value,
                          "layers": {k.value: torch.from_numpy(np.ascontiguousarray(v))
                                     for k, v in store._decoded(r).items()},
                          "captions": {k.value: v for k, v in r.captions.items()}}
                         for r in read_rows(dataset, split)]
    torch.save(packed, out)
    print(json.dumps({split: len(rows) for split, rows in packed.items()}))


def value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def run(name: str, steps: int, packed: str, options: list[str]) -> None:
    opts = dict(option.split("=", 1) for option in options)
    lr, bs, seed = float(opts.pop("lr", 1e-3)), int(opts.pop("bs", 4)), int(opts.pop("seed", 0))
    dw, evals, nseeds = float(opts.pop("dw", 6.0)), int(opts.pop("evals", 3)), int(opts.pop("nseeds", 2))
    config = preset("toy", **{k: value(v) for k, v in opts.items()})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = torch.load(packed, weights_only=True)
    train = [r for r in data["train"] if r["kind"].startswith("video_")]
    val = data["val"]

    def layers(row, start):
        return {Layer(k): v[start:start + config.frames].numpy().astype(np.float32) / 255.0
                for k, v in row["layers"].items()}

    parts = build(config, device, seed=seed)
    model = parts.model
    trained = model.freeze_for(Stage.BASE)
    params = list(trained.values())
    schedule = TrainConfig(manifest=packed, out="", lr=lr, batch_size=bs, ema=0.99, seed=seed)  # warm-up 50, clip 1
    optimizer = torch.optim.AdamW(params, lr=lr, betas=ADAM_BETAS, weight_decay=schedule.weight_decay)
    ema = {n: p.detach().clone() for n, p in trained.items()}
    diffusion = Diffusion(config.snr_shift)
    weights = {Task.GENERATE: 1.0, Task.DECOMPOSE: dw, Task.FG2BG: 1.0, Task.BG2FG: 1.0}
    tasks, task_p = list(weights), np.array(list(weights.values())) / sum(weights.values())
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def decompose(rows, seeds):
        live = {n: p.detach().clone() for n, p in trained.items()}
        for n, p in trained.items():
            p.copy_(ema[n])
        model.eval()
        given = condition_mask(config.layout, Task.DECOMPOSE, config.latent_frames)
        truth = [layers(r, 0) for r in rows]
        x0 = torch.stack([pack(t, config.layout) for t in truth]).to(device)
        text = parts.encode_prompts([prompts_for(r["captions"], Task.DECOMPOSE) for r in rows])
        ious, inside = [], []
        for k in range(seeds):
            with autocast("auto", device):
                out = sample(model, text, tuple(x0.shape), given=given, condition=x0, steps=8, cfg=3.0,
                             snr_shift=config.snr_shift, generator=torch.Generator().manual_seed(100 + k))
            for j, t in enumerate(truth):
                got = unpack(out[j], config.layout)
                ious.append(alpha_iou(got[Layer.ALPHA], t[Layer.ALPHA]))
                mask = t[Layer.ALPHA] >= 0.5
                if mask.any():
                    inside.append(psnr(255 * got[Layer.BACKGROUND][mask], 255 * t[Layer.BACKGROUND][mask]))
        for n, p in trained.items():
            p.copy_(live[n])
        model.train()
        return round(float(np.mean(ious)), 4), round(float(np.mean(inside)), 2)

    began, losses = time.time(), []
    model.train()
    for step in range(steps):
        task = tasks[rng.choice(len(tasks), p=task_p)]
        picks = [train[i] for i in rng.integers(0, len(train), bs)]
        clips = torch.stack([pack(layers(r, int(rng.integers(0, r["layers"]["alpha"].shape[0] - config.frames + 1))),
                                  config.layout) for r in picks]).to(device)
        drop = prompt_drop(bs, config, generator)
        text = parts.encode_prompts([prompts_for(r["captions"], task) for r in picks], drop)
        t, noise = diffusion.draw(clips, generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step)
        loss = diffusion.loss(model, clips, text, condition_mask(config.layout, task, config.latent_frames),
                              drawn=(t, noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
        optimizer.step()
        with torch.no_grad():
            decay = ema_decay(schedule, step)
            for n, p in trained.items():
                ema[n].lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        if (step + 1) % max(steps // evals, 1) == 0 or step + 1 == steps:
            val_iou, val_bg = decompose(val, nseeds)
            train_iou, _ = decompose(train[:32], 1)
            print(json.dumps({"name": name, "step": step + 1, "loss": round(float(np.mean(losses[-200:])), 4),
                              "seconds": round(time.time() - began), "val_alpha_iou": val_iou,
                              "val_bg_psnr_inside": val_bg, "train_alpha_iou": train_iou, "options": options,
                              "device": device.type}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "pack":
        pack_dataset(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)
