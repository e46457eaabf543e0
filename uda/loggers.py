"""Logger construction: W&B online when an API key is configured, offline otherwise; CSV beside it."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """True when W&B has credentials: WANDB_API_KEY or an api.wandb.ai entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` → ``online`` with credentials, else ``offline``; an explicit WANDB_MODE always wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode == "auto":
        return "online" if wandb_api_key_configured() else "offline"
    return mode


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger under ``cfg.logger``; W&B gets the resolved config and mode."""
    loggers: list[Logger] = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        kwargs: dict[str, Any] = {}
        if node.get("_target_") == WANDB_LOGGER:
            mode = str(node.get("mode", "auto"))
            if mode not in WANDB_MODES:
                from uda.errors import ConfigError

                raise ConfigError(f"logger.wandb.mode={mode!r} is unknown; choose one of: {', '.join(WANDB_MODES)}")
            kwargs["mode"] = resolve_wandb_mode(mode)
            # `config` cannot be passed through instantiate() (it is that function's own first argument)
            factory = instantiate(node, _partial_=True, **kwargs)
            loggers.append(factory(config=OmegaConf.to_container(cfg, resolve=True)))
            continue
        loggers.append(instantiate(node, **kwargs))
    return loggers


def finish_wandb(exit_code: int = 0) -> None:
    """Close the active W&B run, if any (always called at the end of a job, success or not)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
