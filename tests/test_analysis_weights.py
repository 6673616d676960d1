"""Weight-space tools on hand-made pytrees: interpolation endpoints bit for bit,
errors that name the mismatched parameter, loss barriers by hand, task arithmetic,
and TIES-Merging against a trim / elect / merge worked out in the comments."""
import re

import jax.numpy as jnp
import numpy as np
import pytest

from tandem.analysis import weights

F32 = np.float32


def test_interpolation_endpoints_are_exact():
  # Naively, (1 - 1) * inf = nan at alpha = 1 and 0 * inf = nan at alpha = 0, and
  # 3e38 + 3e38 overflows: only returning the endpoints themselves is exact.
  a = {"w": np.array([np.inf, 3e38, -1.5, 0.1], F32), "b": np.array([1e-30], F32)}
  b = {"w": np.array([1.0, 3e38, np.inf, 0.7], F32), "b": np.array([2.0], F32)}
  with np.errstate(invalid="ignore"):
    assert np.isnan((1 - 1.0) * a["w"] + 1.0 * b["w"]).any()
  at_0, at_1 = weights.interpolate(a, b, 0.0), weights.interpolate(a, b, 1)
  for name in a:
    np.testing.assert_array_equal(at_0[name], a[name])
    np.testing.assert_array_equal(at_1[name], b[name])
    assert at_0[name].dtype == at_1[name].dtype == F32
  assert at_0["w"] is not a["w"]  # A copy, not the caller's array.


def test_interpolation_midpoints():
  a = {"dense": {"kernel": np.array([[1.0, -2.0], [4.0, 0.0]], F32)}}
  b = {"dense": {"kernel": np.array([[3.0, 2.0], [0.0, 8.0]], F32)}}
  np.testing.assert_array_equal(weights.interpolate(a, b, 0.5)["dense"]["kernel"],
                                [[2.0, 0.0], [2.0, 4.0]])
  np.testing.assert_array_equal(weights.interpolate(a, b, np.float64(0.25))
                                ["dense"]["kernel"], [[1.5, -1.0], [3.0, 2.0]])
  # bfloat16 JAX leaves: computed in float32, returned in bfloat16.
  a16 = {"w": jnp.array([1.0, 2.0], jnp.bfloat16)}
  b16 = {"w": jnp.array([2.0, 4.0], jnp.bfloat16)}
  mid = weights.interpolate(a16, b16, 0.5)["w"]
  assert mid.dtype == jnp.bfloat16
  np.testing.assert_array_equal(mid.astype(F32), [1.5, 3.0])


def test_mismatched_trees_name_the_first_differing_parameter():
  a = {"dense": {"bias": np.zeros(2, F32), "kernel": np.zeros((3, 2), F32)}}
  missing = {"dense": {"kernel": np.zeros((3, 2), F32)}}
  with pytest.raises(ValueError, match=re.escape("['dense']['bias']")):
    weights.interpolate(a, missing, 0.5)
  reshaped = {"dense": {"bias": np.zeros(2, F32), "kernel": np.zeros((2, 3), F32)}}
  shapes = re.escape("['dense']['kernel'] is float32[3, 2]")
  with pytest.raises(ValueError, match=shapes):
    weights.ties_merge(a, [a, reshaped])
  recast = {"dense": {"bias": np.zeros(2, np.float64), "kernel": a["dense"]["kernel"]}}
  with pytest.raises(ValueError, match=re.escape("['dense']['bias']")):
    weights.task_arithmetic(a, [recast])
  with pytest.raises(TypeError, match="step"):
    weights.task_vector({"step": np.array(3)}, {"step": np.array(1)})


def test_interpolation_path_and_its_barrier():
  a, b = {"w": np.array([1.0, 2.0], F32)}, {"w": np.array([3.0, -1.0], F32)}
  sum_of_squares = lambda p: float(np.sum(np.square(p["w"], dtype=np.float64)))
  path = weights.interpolation_path(a, b, lambda p: {"loss": sum_of_squares(p)})
  assert [r["alpha"] for r in path] == list(np.linspace(0.0, 1.0, 11))
  assert path[0]["loss"] == 5.0 and path[-1]["loss"] == 10.0
  # A convex loss stays under the chord: no barrier.
  assert weights.loss_barrier(path) == 0.0
  # A concave one: -|(1-t)a + tb|^2 exceeds the chord by t(1-t)|a-b|^2, at most
  # |a-b|^2 / 4 = 13 / 4, at t = 1/2 (-4.25 against the chord's -7.5).
  path = weights.interpolation_path(a, b, lambda p: -sum_of_squares(p), [0, 0.5, 1])
  assert path == [{"alpha": 0.0, "score": -5.0}, {"alpha": 0.5, "score": -4.25},
                  {"alpha": 1.0, "score": -10.0}]
  assert weights.loss_barrier(path, key="score") == 3.25


def test_loss_barrier_by_hand():
  path = [{"alpha": 0.0, "loss": 1.0}, {"alpha": 0.25, "loss": 2.5},
          {"alpha": 0.5, "loss": 2.5}, {"alpha": 0.75, "loss": 2.25},
          {"alpha": 1.0, "loss": 2.0}]
  # The chord is 1 + alpha: excesses 0, 1.25, 1.0, 0.5, 0. (Above the endpoints'
  # mean, 1.5, Frankle et al.'s instability would be 2.5 - 1.5 = 1.0.)
  assert weights.loss_barrier(path) == 1.25
  with pytest.raises(ValueError, match="alpha = 0 and alpha = 1"):
    weights.loss_barrier(path[1:])


def test_task_arithmetic():
  pretrained = {"w": np.array([1.0, 2.0, 3.0], F32)}
  first = {"w": np.array([2.0, 2.0, 3.0], F32)}   # Task vector [1, 0, 0].
  second = {"w": np.array([1.0, 0.0, 4.0], F32)}  # Task vector [0, -2, 1].
  np.testing.assert_array_equal(weights.task_vector(second, pretrained)["w"],
                                [0.0, -2.0, 1.0])
  merged = weights.task_arithmetic(pretrained, [first, second], scale=0.5)
  np.testing.assert_array_equal(merged["w"], [1.5, 1.0, 3.5])
  assert merged["w"].dtype == F32
  forgotten = weights.task_arithmetic(pretrained, [first], scale=-1.0)
  np.testing.assert_array_equal(forgotten["w"], [0.0, 2.0, 3.0])


def test_ties_merge_by_hand():
  # Task vectors over 6 parameters (leaf "a" holds the first 2, "b" the other 4);
  # density 0.5 keeps the top k = 3 magnitudes of each:
  #   tau1 = [ 4, -1,  0.5, -3,  2,   1.5]  -> [ 4,  0, 0, -3,  2, 0]
  #   tau2 = [-2,  5, -0.5, -1, -2,   3  ]  -> [-2,  5, 0,  0, -2, 3]  (5, 3 and
  #                                            both 2s, tied at the threshold)
  #   tau3 = [ 1, -6,  7,   -2,  0.5, 0  ]  -> [ 0, -6, 7, -2,  0, 0]
  # Elected signs, of the sums [2, -1, 7, -5, 0, 3]: [+, -, +, -, 0, +].
  # Mean of the agreeing non-zero entries: [4, -6, 7, (-3 - 2) / 2, 0, 3]; the
  # exactly cancelling fifth parameter has sign 0 and merges to 0.
  taus = np.array([[4, -1, 0.5, -3, 2, 1.5], [-2, 5, -0.5, -1, -2, 3],
                   [1, -6, 7, -2, 0.5, 0]], F32)
  base = np.array([0.5, 1.0, -1.0, 2.0, 0.0, 0.25], F32)
  as_tree = lambda flat: {"a": flat[:2], "b": flat[2:].reshape(2, 2)}
  merged = np.array([4, -6, 7, -2.5, 0, 3], F32)
  for scale in (1.0, 2.0):
    result = weights.ties_merge(as_tree(base), [as_tree(base + t) for t in taus],
                                density=0.5, scale=scale)
    expected = as_tree(base + scale * merged)
    np.testing.assert_array_equal(result["a"], expected["a"])
    np.testing.assert_array_equal(result["b"], expected["b"])
    assert result["b"].dtype == F32


def test_ties_trims_over_the_whole_model_not_per_layer():
  pretrained = {"big": np.zeros(2, F32), "small": np.zeros(2, F32)}
  finetuned = {"big": np.array([10.0, -20.0], F32), "small": np.array([0.1, 0.2], F32)}
  merged = weights.ties_merge(pretrained, [finetuned], density=0.5)
  np.testing.assert_array_equal(merged["big"], [10.0, -20.0])
  np.testing.assert_array_equal(merged["small"], [0.0, 0.0])
  # Keeping everything of a single model gives that model back.
  kept = weights.ties_merge(pretrained, [finetuned], density=1.0)
  np.testing.assert_array_equal(kept["small"], finetuned["small"])
  with pytest.raises(ValueError, match="density"):
    weights.ties_merge(pretrained, [finetuned], density=0.2)  # int(0.2 * 4) = 0.
