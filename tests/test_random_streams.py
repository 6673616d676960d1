"""Every random stream of a train step has its own key: the views' augmentations,
Mixed Barlow Twins' permutation and α, MAE's mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tandem import random_streams
from tandem.data import augment
from tandem.ssl import barlow_twins


def test_salts_are_distinct_stable_and_names_are_checked():
  salts = [random_streams.salt(n) for n in random_streams.NAMES]
  assert len(set(salts)) == len(salts)
  assert random_streams.salt("mixup/permutation") == 102016253  # CRC-32, fixed.
  with pytest.raises(ValueError, match="Unknown random stream"):
    random_streams.stream(jax.random.key(0), "augment/view3")


def _keys_derived_from(key, batch):
  """`key` and the keys one `split` of it gives (2 or one per example)."""
  out = [key] + list(jax.random.split(key)) + list(jax.random.split(key, batch))
  return {tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in out}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_mixing_keys_are_independent_of_the_views_keys(seed, monkeypatch):
  """Records the keys the real code hands to each view's augmentation and to the
  mixing permutation and α; no mixing key may be a view key or one split from it
  (the old fold_in(rng, 1) was exactly view 2's key)."""
  rng = jax.random.fold_in(jax.random.key(seed), 123)  # A step's key.
  batch = 16
  view_keys, mix_keys = [], []
  real_view = augment.augment_view
  monkeypatch.setattr(augment, "augment_view",
                      lambda key, images, cfg: view_keys.append(key) or
                      real_view(key, images, cfg))
  real_perm, real_beta = jax.random.permutation, jax.random.beta
  monkeypatch.setattr(jax.random, "permutation",
                      lambda key, *a, **k: mix_keys.append(key) or
                      real_perm(key, *a, **k))
  monkeypatch.setattr(jax.random, "beta",
                      lambda key, *a, **k: mix_keys.append(key) or
                      real_beta(key, *a, **k))
  images = jnp.zeros((batch, 8, 8, 1), jnp.uint8)
  # Every op off: the keys handed out do not depend on the ops, and eager
  # augmentation ops are slow to compile.
  augment.two_views(rng, images, {"view1": augment.IDENTITY,
                                  "view2": augment.IDENTITY})
  perm, alpha = barlow_twins.mixing(rng, batch, 1.0)
  assert len(view_keys) == 2 and len(mix_keys) == 2
  assert sorted(np.asarray(perm).tolist()) == list(range(batch))
  assert 0.0 < float(alpha) < 1.0
  derived = set().union(*(_keys_derived_from(k, batch) for k in view_keys))
  for key in mix_keys:
    assert tuple(np.asarray(jax.random.key_data(key)).tolist()) not in derived
  # And the two views do not share keys with each other.
  assert not (_keys_derived_from(view_keys[0], batch)
              & _keys_derived_from(view_keys[1], batch))
