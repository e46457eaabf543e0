"""One training job: validate the config, build everything by ``_target_``, fit, summarize, close W&B."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from uda.checkpoint import AtomicCheckpointIO, keep_previous_csv, resolve_ckpt_path
from uda.config import recipe_notice, validate
from uda.errors import ConfigError, UserError
from uda.harmonizers import NoHarmonizer
from uda.loggers import build_loggers, finish_wandb
from uda.models.input_check import check_backbone_takes
from uda.module import UDAModule
from uda.provenance import provenance
from uda.summary import RunSummary, format_summary
from uda.training import EngineOptions

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Send Lightning's messages through the root logger only (Hydra's console + run.log), once each,
    and drop its start-up chatter (accelerator probes, advertising tips); warnings still show."""
    import warnings

    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def build_node(node: Any, what: str, **kwargs: Any) -> Any:
    """``instantiate`` whose failures become one-sentence config errors naming the config group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from None
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"could not build the {what} from the config: {message}") from err
    except UserError:
        raise


def _choices() -> dict[str, str]:
    if HydraConfig.initialized():
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}
    return {}


def harmonizer_params(harmonizer: object) -> dict[str, Any]:
    """The harmonizer's hyper-parameters as plain values (e.g. ``{"lam": 0.5}``), for tables and plots."""
    params = getattr(harmonizer, "hyperparameters", None)
    return (
        {k: (v if isinstance(v, int | float | str | bool) or v is None else str(v)) for k, v in params().items()}
        if params
        else {}
    )


def harmonizer_noop_reason(baseline: Any, module: UDAModule) -> str:
    """Why the harmonizer did nothing in this run, for the summary ("" when it acted)."""
    if not baseline.stages:
        return "evaluation only, nothing is trained"
    if not module.harmonizes:
        return "no stage of the baseline has two losses to harmonize"
    harmonized = [plan for plan in module.plans.values() if plan.groups]
    if all(plan.procedure != "backprop" for plan in harmonized):
        # a closure procedure (PGA) shapes the update itself and consults no harmonizer
        return f"engine.procedure={harmonized[0].procedure} shapes the update itself"
    return ""


def pinned_device(job_num: int, device_count: int) -> int:
    """The GPU index of sweep job ``job_num`` when jobs are spread round-robin over ``device_count`` GPUs."""
    if device_count <= 0:
        raise ValueError("pin_device needs at least one GPU")
    return int(job_num) % int(device_count)


def _pinned_devices(cfg: DictConfig) -> dict[str, Any]:
    """``pin_device=true`` in a multirun with CUDA: ``devices=[job_num mod #GPUs]`` (one GPU per job)."""
    if not cfg.get("pin_device"):
        return {}
    import torch

    if not torch.cuda.is_available() or not HydraConfig.initialized():
        return {}
    job_num = HydraConfig.get().job.get("num") or 0
    return {"accelerator": "gpu", "devices": [pinned_device(job_num, torch.cuda.device_count())]}


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def dataset_facts(baseline_node: Any, datamodule: Any) -> dict[str, Any]:
    """What the dataset tells a baseline that names it in its signature: the class names
    (``dataset_class_names``, for CLIP prompts) and the (source, target) domain names (``dataset_domains``)."""
    import inspect

    from hydra.utils import get_class

    facts = {
        "dataset_class_names": tuple(datamodule.class_names),
        "dataset_domains": (datamodule.source, datamodule.target),
    }
    try:
        accepted = inspect.signature(get_class(baseline_node._target_)).parameters
    except Exception:  # noqa: BLE001 - an unimportable _target_ fails in build_node with its own sentence
        return {}
    return {k: v for k, v in facts.items() if k in accepted}


def run(cfg: DictConfig) -> RunSummary:
    """Train and evaluate once; return the summary (also written to ``<output_dir>/summary.json``)."""
    validate(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # cheapest first, so a bad value fails before any data or weights are loaded
    harmonizer = build_node(cfg.harmonizer, "harmonizer")
    datamodule = build_node(cfg.dataset, "dataset", iters_per_epoch=cfg.eval_every, seed=cfg.seed)
    backbone = build_node(cfg.backbone, "backbone")
    baseline = build_node(
        cfg.baseline,
        "baseline",
        backbone=backbone,
        num_classes=datamodule.num_classes,
        **dataset_facts(cfg.baseline, datamodule),
    )
    choices = _choices()
    notice = recipe_notice(cfg, choices)
    if notice:
        log.warning(notice)
    # data present and readable, and a backbone that takes its images: checked now, not at the first step
    datamodule.setup("fit")
    with torch.random.fork_rng(devices=[]):  # a random train transform must not shift the run's RNG stream
        sample = datamodule.source_data.train[0][0]
    backbone_choice = choices.get("backbone", "")
    label = f"backbone={backbone_choice}" if backbone_choice and not backbone_choice.startswith("for_") else None
    check_backbone_takes(backbone, sample, label or f"the recipe backbone ({type(backbone).__name__})")
    engine = EngineOptions(**OmegaConf.to_container(cfg.engine, resolve=True))
    module = UDAModule(
        baseline,
        harmonizer,
        optimizer=build_node(cfg.optimizer, "optimizer"),
        scheduler=build_node(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None,
        lr_mult=OmegaConf.to_container(cfg.lr_mult, resolve=True) if cfg.get("lr_mult") else None,
        engine=engine,
    )
    noop = harmonizer_noop_reason(baseline, module)
    if noop.startswith("engine.procedure") and not isinstance(harmonizer, NoHarmonizer):
        log.warning(f"harmonizer={choices.get('harmonizer', harmonizer.name)} does nothing here: {noop}")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), _output_dir(cfg))
    if cfg.get("ckpt_path") == "last":
        print(f"resuming from {ckpt_path}" if ckpt_path else "ckpt_path=last: no checkpoint yet, training from scratch")
    if ckpt_path:
        keep_previous_csv(_output_dir(cfg))
    callbacks = [build_node(node, "callbacks") for node in (cfg.get("callbacks") or {}).values() if node]
    pinned = _pinned_devices(cfg)
    trainer = build_node(
        cfg.trainer,
        "trainer",
        **pinned,
        logger=build_loggers(cfg) or False,
        callbacks=callbacks,
        max_epochs=cfg.iterations // cfg.eval_every,
        plugins=[AtomicCheckpointIO()],
    )
    if baseline.stages:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    else:  # an evaluation-only baseline (zeroshot_clip): nothing to train, one evaluation
        trainer.validate(module, datamodule=datamodule)

    results = module.results()
    plans = tuple({"name": name, **plan.describe()} for name, plan in module.plans.items())
    # the options a stage plan resolves (null = the baseline's official choice) are recorded there, resolved;
    # first_loss shows as the order of each harmonized group
    in_plans = {key for plan in plans for key in plan} | {"first_loss"}
    engine = {k: v for k, v in results.pop("engine", {}).items() if k not in in_plans}
    summary = RunSummary(
        dataset=choices.get("dataset", datamodule.name),
        task=datamodule.task,
        source=datamodule.source,
        target=datamodule.target,
        baseline=baseline.name,
        seed=int(cfg.seed),
        harmonizer_name=choices.get("harmonizer", harmonizer.name),
        harmonizer_params=harmonizer_params(harmonizer),
        harmonizer_noop=noop,
        plan=plans,
        engine=engine,
        results={**results, "source_val_split": datamodule.source_eval_split},
        experiment=choices.get("experiment"),
        recipe=cfg.get("applied_recipe"),
        # e.g. "not a result: CLIP tiny is randomly initialized ..." (uda.models.clip)
        note=getattr(backbone, "note", None),
        provenance=provenance(),
        output_dir=str(_output_dir(cfg)),
    )
    if trainer.is_global_zero:
        summary.write(_output_dir(cfg))
        for lg in trainer.loggers:
            if lg.__class__.__name__ == "WandbLogger":
                lg.experiment.config.update(summary.wandb_config(), allow_val_change=True)
                lg.experiment.summary.update(summary.wandb_summary())
    return summary


def job_failure_sentence(err: BaseException) -> str:
    """One line saying that a sweep job failed unexpectedly, with what, and where the traceback is."""
    lines = str(err).strip().splitlines()
    what = f"{type(err).__name__}: {lines[0].strip().rstrip('.')}" if lines else type(err).__name__
    return f"the job failed with {what}; the traceback is in this job's run.log: fix the cause and rerun this job"


def _in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def main(cfg: DictConfig) -> float | None:
    """Entry point used by ``run.py``: user errors end in one sentence and a non-zero exit.

    In a sweep (``-m``) a failing job, whatever the error, writes one sentence to ``error.txt`` in its
    directory and the sweep goes on.
    """
    exit_code = 1
    try:
        summary = run(cfg)
        exit_code = 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        if _in_multirun():
            (_output_dir(cfg) / "error.txt").write_text(f"{err}\n")
            return None
        raise SystemExit(2) from None
    except Exception as err:
        if not _in_multirun():
            raise  # a single run shows the whole traceback
        # in a sweep one broken job must not stop the others: one sentence in error.txt, the traceback in the log
        sentence = job_failure_sentence(err)
        log.exception(sentence)
        print(f"error: {sentence}", file=sys.stderr, flush=True)
        (_output_dir(cfg) / "error.txt").write_text(f"{sentence}\n")
        return None
    finally:
        finish_wandb(exit_code)
    if rank_zero_only.rank == 0:  # under DDP every rank returns the summary; one prints it
        print(format_summary(summary), flush=True)
    return summary.metric(cfg.get("optimized_metric", "target_acc_last"))
