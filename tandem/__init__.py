"""Tandem: self-supervised pretraining and transfer in JAX.

`tandem.load(workdir, step=None)` returns a pretrained checkpoint with `.config`,
`.params` and `.embed(images, layer=..., batch_size=...)`; see tandem/pretrained.py.
"""


def load(workdir: str, step: int | None = None):
  from tandem import pretrained  # Lazy: keeps `import tandem` cheap.
  return pretrained.load(workdir, step)
