"""Train one UDA job (or a sweep with -m). Examples:

python run.py                                   # CDAN+E + GH++ on MNIST-5k -> UCI (offline)
python run.py baseline=cdan harmonizer=ghpp dataset=offline_digits
python run.py -m harmonizer=ghpp harmonizer.lam=0,0.25,0.5,0.75,1 seed=0,1,2
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from uda.train import main as train_main  # imported late: `--help` and config errors stay fast

    return train_main(cfg)


if __name__ == "__main__":
    main()
