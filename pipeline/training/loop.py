"""The training loop shared by ``warmup`` (ReFICR_INIT) and ``finetune``: small and explicit.

    loop = TrainLoop(lm, config, compute_loss, out_dir)
    loop.run()          # resumes from out_dir/checkpoint if one is there

- ``accelerate`` places the model, optimizer and scheduler and handles mixed precision; the same loop runs
  under ``accelerate launch --num_processes N -m stages.finetune`` on several GPUs (DDP).
- Each optimizer step draws its batches from a RNG seeded by (seed, step, micro-step), so the data of step
  ``s`` never depends on what ran before it: a resumed run sees exactly the batches a straight run sees.
- Checkpoints every ``save_every`` steps hold the adapter (safetensors), the optimizer moments (safetensors),
  the step, the scheduler position and the RNG states (JSON + safetensors): no pickle. A run killed mid-way
  and started again resumes from the last checkpoint and ends with the same weights.
- AdamW, linear warm-up (``warmup_ratio``) then linear decay; gradient accumulation; gradient clipping;
  optional gradient checkpointing. A NaN/inf loss stops the run with a clear message.
- Per step, ``loss``, ``loss_cl``, ``loss_gen`` and ``lr`` go to ``<out_dir>/loss.csv`` (for ``dvc plots``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline.errors import ReficrError
from pipeline.io import atomic_dir, atomic_path, recover
from pipeline.model.lm import RetrievableLM
from pipeline.training.losses import JointLossOutput

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
SNAPSHOTS = "snapshots"  # adapters kept along the way (``TrainLoop.snapshot``), saved as subfolders of the result
CHECKPOINT_FILES = ("state.json", "state.safetensors", "adapter/adapter_model.safetensors")


def loss_row(step: int, loss: float, loss_cl: float, loss_gen: float, lr: float) -> list:
    """A row of the loss log (step, loss, loss_cl, loss_gen, lr), as ``run`` and ``add_steps`` write it."""
    return [step, f"{loss:.6f}", f"{loss_cl:.6f}", f"{loss_gen:.6f}", f"{lr:.3e}"]


class TrainingDiverged(ReficrError, RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(kw_only=True)
class TrainConfig:
    """One training run's settings (``warmup.*`` / ``finetune.*``); the defaults are the small profile's."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    save_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False


def code_version() -> str:
    """Hash of the training code's source (this package's modules that shape a training step): a checkpoint
    written by other code is not resumed."""
    here = Path(__file__).parent.parent  # pipeline/
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    return digest.hexdigest()


TRAINING_CODE = ("training/loop.py", "training/objectives.py", "training/losses.py", "model/lm.py", "training/catalogue.py",
                 "tasks/templates.py")


def run_fingerprint(settings: dict, *files: str | Path) -> str:
    """Hash of the settings, the input files (the base model's weights among them, as their manifest) and the
    training code's version that a training run depends on (a checkpoint is resumed only if equal)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(code_version().encode())
    for path in files:
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def linear_schedule(step: int, total: int, warmup_ratio: float) -> float:
    """LR multiplier: linear warm-up over ceil(warmup_ratio * total) steps, then linear decay to 0."""
    warmup = max(1, math.ceil(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


LossFn = Callable[[RetrievableLM, random.Random], JointLossOutput]
Validator = Callable[[RetrievableLM], list[dict]]  # rows of held-out scores (same keys each time)


class TrainLoop:
    def __init__(self, lm: RetrievableLM, config: TrainConfig, compute_loss: LossFn, out_dir: str | Path,
                 stop_after: int | None = None, fingerprint: str = "", extra_params: dict[str, torch.nn.Parameter] | None = None,
                 extra_lr: float | Mapping[str, float] | None = None, validate: Validator | None = None, validate_every: int = 0):
        from accelerate import Accelerator

        self.lm, self.config, self.compute_loss = lm, config, compute_loss
        self.out_dir = Path(out_dir)
        self.stop_after = stop_after  # for tests: stop (as if killed) after this many steps
        self.fingerprint = fingerprint  # a checkpoint of other data or settings is never resumed
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       cpu=lm.device.type == "cpu")
        if config.gradient_checkpointing:
            lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(lm.model, "enable_input_require_grads"):
                lm.model.enable_input_require_grads()
        self.extra_params = dict(extra_params or {})  # trained beside the adapter (e.g. item biases), own lr:
        # ``extra_lr`` for all, or per name (a Mapping); config.lr where it gives none
        self.validate, self.validate_every = validate, validate_every
        self.params = [p for p in lm.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters: attach a LoRA adapter first")
        self.names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
        groups = [{"params": self.params}]
        lrs = {name: (extra_lr.get(name) if isinstance(extra_lr, Mapping) else extra_lr) or config.lr
               for name in self.extra_params}
        for lr in dict.fromkeys(lrs.values()):  # one group per learning rate, in the parameters' order
            groups.append({"params": [p for name, p in self.extra_params.items() if lrs[name] == lr], "lr": lr})
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        # The scheduler stays a plain LambdaLR (its position is just the step, restored on resume).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: linear_schedule(s, config.steps, config.warmup_ratio))
        self.lm.model, self.optimizer = self.accelerator.prepare(lm.model, optimizer)
        self.step = 0

    # --------------------------------------------------------------- checkpoints (no pickle)
    def save_checkpoint(self) -> None:
        """The adapter, optimizer, extra parameters and RNG states, written beside the checkpoint, fsynced and
        swapped in (``pipeline.io.atomic_dir``): a kill at any instant leaves the previous checkpoint or this one,
        complete; a failure leaves no temporary folder."""
        with atomic_dir(self.out_dir / CHECKPOINT) as tmp:  # a full disk: OutputError, the old checkpoint kept
            self.accelerator.unwrap_model(self.lm.model).save_pretrained(tmp / "adapter", safe_serialization=True)
            tensors, meta = {}, {"step": self.step, "config": asdict(self.config), "fingerprint": self.fingerprint,
                                 "param_groups": [], "state": {}}
            state = self.optimizer.state_dict()
            for g in state["param_groups"]:
                meta["param_groups"].append({k: v for k, v in g.items() if k != "params"} | {"params": g["params"]})
            for pid, s in state["state"].items():
                meta["state"][str(pid)] = {}
                for key, value in s.items():
                    if torch.is_tensor(value):
                        tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
                    else:
                        meta["state"][str(pid)][key] = value
            for name, param in self.extra_params.items():
                tensors[f"extra.{name}"] = param.detach().cpu().contiguous()
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                for i, s in enumerate(torch.cuda.get_rng_state_all()):
                    tensors[f"rng.cuda.{i}"] = s
            meta["rng_python"] = list(random.getstate()[1]), random.getstate()[2]
            np_state = np.random.get_state()
            tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
            meta["rng_numpy_pos"] = [int(np_state[2]), int(np_state[3]), float(np_state[4])]
            save_file(tensors, tmp / "state.safetensors")
            (tmp / "state.json").write_text(json.dumps(meta))

    def load_checkpoint(self) -> bool:
        folder = self.out_dir / CHECKPOINT
        recover(folder)
        if not (folder / "state.json").exists():
            return False
        missing = [name for name in CHECKPOINT_FILES if not (folder / name).exists()]
        if missing:  # not written by this code's crash-safe save: never resumed half
            log.warning("%s is incomplete (no %s): starting afresh", folder, ", ".join(missing))
            return False
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file as load_adapter_file

        meta = json.loads((folder / "state.json").read_text())
        if meta.get("fingerprint") != self.fingerprint or meta.get("config") != asdict(self.config):
            log.warning("%s was written for other data or settings: starting afresh", folder)
            return False
        tensors = load_file(folder / "state.safetensors")
        model = self.accelerator.unwrap_model(self.lm.model)
        set_peft_model_state_dict(model, load_adapter_file(folder / "adapter/adapter_model.safetensors"))
        with torch.no_grad():
            for name, param in self.extra_params.items():
                param.copy_(tensors[f"extra.{name}"])
        state = {"param_groups": meta["param_groups"], "state": {}}
        for pid, scalars in meta["state"].items():
            entry = dict(scalars)
            for key in list(tensors):
                if key.startswith(f"opt.{pid}."):
                    entry[key.split(".", 2)[2]] = tensors[key]
            state["state"][int(pid)] = entry
        self.optimizer.load_state_dict(state)
        self.step = int(meta["step"])
        self.scheduler.last_epoch = self.step
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            g["lr"] = base * linear_schedule(self.step, self.config.steps, self.config.warmup_ratio)
        torch.set_rng_state(tensors["rng.torch"])
        for key, value in tensors.items():
            if key.startswith("rng.cuda.") and torch.cuda.is_available():
                torch.cuda.set_rng_state(value, int(key.rsplit(".", 1)[1]))
        words, pos = meta["rng_python"]
        random.setstate((3, tuple(words), pos))
        np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), *meta["rng_numpy_pos"]))
        log.info("resumed from %s at step %d", folder, self.step)
        return True

    # --------------------------------------------------------------- the loop
    def run(self) -> Path:
        """Train to ``config.steps``; returns the path of the loss log."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        losses_path = self.out_dir / "loss.csv"
        if (self.out_dir / SNAPSHOTS).exists():  # taken after the steps: a killed run's are stale
            shutil.rmtree(self.out_dir / SNAPSHOTS)
        resumed = self.load_checkpoint()
        if not resumed:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            with open(losses_path, "w", newline="") as fh:
                csv.writer(fh).writerow(["step", "loss", "loss_cl", "loss_gen", "lr"])
            (self.out_dir / "validation.csv").unlink(missing_ok=True)  # rows of an abandoned run
            if self.validate:
                self._validate()  # step 0: where training starts from
        else:
            self._truncate_log(losses_path)
            self._truncate_log(self.out_dir / "validation.csv")
        self.lm.model.train()
        started, first = time.perf_counter(), self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        while self.step < cfg.steps:
            totals = np.zeros(3)
            for micro in range(cfg.grad_accum):
                rng = random.Random(f"{cfg.seed}:{self.step}:{micro}")
                with self.accelerator.autocast():
                    out = self.compute_loss(self.lm, rng)
                loss, loss_cl, loss_gen = (float(t.detach()) for t in (out.loss, out.loss_cl, out.loss_gen))
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"loss is {loss} at step {self.step} (loss_cl={loss_cl}, "
                                           f"loss_gen={loss_gen}); lower the learning rate or check the data")
                self.accelerator.backward(out.loss / cfg.grad_accum)
                totals += [loss, loss_cl, loss_gen]
            if cfg.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            row = totals / cfg.grad_accum
            with open(losses_path, "a", newline="") as fh:
                csv.writer(fh).writerow(loss_row(self.step, *row, lr))
            bar.update(1)
            done = self.step - first
            eta = (time.perf_counter() - started) / done * (cfg.steps - self.step)
            bar.set_postfix(loss=f"{row[0]:.4f}", eta=f"{eta:.0f}s")
            if self.validate and (self.step % self.validate_every == 0 or self.step == cfg.steps):
                self._validate()
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.stop_after is not None and done >= self.stop_after:
                break
        bar.close()
        return losses_path

    def snapshot(self, name: str, extra: dict) -> None:
        """The adapter as it is now, kept as ``name`` (a subfolder) of the adapter ``finish`` saves. After ``run``, in
        one process (``stages.finetune`` refuses more training after the loop under several)."""
        self.lm.model = self.accelerator.unwrap_model(self.lm.model)
        self.lm.save_adapter(self.out_dir / SNAPSHOTS / name, extra=extra)

    def add_steps(self, rows: list[dict]) -> None:
        """Steps trained after ``run`` outside the loop (``pipeline.training.trunk_pass``; rows of step, loss, lr):
        their losses appended to the loss log (as the retrieval loss), the step count moved past them, and a
        validation pass at the new step. A resumed run truncates them and trains them again."""
        if not rows:
            return
        with open(self.out_dir / "loss.csv", "a", newline="") as fh:
            csv.writer(fh).writerows(loss_row(self.step + r["step"], r["loss"], r["loss"], 0.0, r["lr"]) for r in rows)
        self.step += len(rows)
        if self.validate:
            self._validate()

    def _validate(self) -> None:
        """Score the model on held-out data now; rows go to ``<out_dir>/validation.csv`` with the step."""
        self.lm.model.eval()
        with torch.no_grad():
            rows = self.validate(self.lm)
        self.lm.model.train()
        path = self.out_dir / "validation.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", *rows[0]])
            writer.writerows([self.step, *(f"{v:.6f}" if isinstance(v, float) else v for v in row.values())] for row in rows)
        log.info("validation at step %d: %s", self.step, rows)

    def finish(self, model_dir: str | Path, plot: str | Path, extra: dict, tensor_file: str = "",
               validation_plot: str | Path | None = None) -> None:
        """Save the trained adapter (and the extra parameters, as ``tensor_file``, and the ``snapshot``s, as its
        subfolders) atomically, publish the loss and validation curves (for ``dvc plots``), drop the resume state."""
        with atomic_dir(model_dir) as tmp:
            self.lm.model = self.accelerator.unwrap_model(self.lm.model)
            self.lm.save_adapter(tmp, extra=extra)
            if self.extra_params:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.extra_params.items()}, tmp / tensor_file)
            snapshots = self.out_dir / SNAPSHOTS
            for folder in sorted(snapshots.iterdir()) if snapshots.is_dir() else ():
                shutil.copytree(folder, tmp / folder.name)
        with atomic_path(plot) as tmp:
            shutil.copyfile(self.out_dir / "loss.csv", tmp)
        if validation_plot is not None:  # no validation ran: a header-only curve, so the plot output exists
            with atomic_path(validation_plot) as tmp:
                source = self.out_dir / "validation.csv"
                shutil.copyfile(source, tmp) if source.exists() else tmp.write_text("step\n")
        shutil.rmtree(self.out_dir)

    def _truncate_log(self, path: Path) -> None:
        """Drop log rows past the checkpoint's step (written after it, before the run died)."""
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= self.step]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(kept)
