r"""Barlow Twins on Fashion-MNIST: lambda x learning rate, 2 x 2 runs.

    python -m tandem.launch.sweep \
        --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --sweep configs/sweeps/bt_lambda_lr.py --workdir workdirs/bt_lambda_lr
    python -m tandem.launch.summary workdirs/bt_lambda_lr --plot

The recipe's lambda = 0.0051 (Zbontar et al. 2021) and AdamW 1e-3 per 256 against
half / double of each (a sweep is data, like a config: override dicts only).
"""
from tandem.hyper import product


def get_sweep():
  return product(**{"barlow_twins.lambd": [0.0025, 0.01],
                    "optimizer.lr_per_256": [5e-4, 2e-3]})
