"""Transfer evaluators on frozen features, callable on any arrays from a notebook:

    tandem.transfer.fewshot(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=(0,))
    tandem.transfer.linear_probe(train_x, train_y, test_x, test_y)
    tandem.transfer.knn(train_x, train_y, test_x, test_y, ks=(20, 200))

Each of these names is its module (`tandem.transfer.fewshot.evaluate_task`, ...)
made callable as the module's function of the same name, so the short call and
the module's other contents live under one name.
"""
import types

from tandem.transfer import fewshot
from tandem.transfer import knn
from tandem.transfer import linear_probe


class _CallableModule(types.ModuleType):
  """A module that, called, calls its function of the module's own name."""

  def __call__(self, *args, **kwargs):
    return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


for _module in (fewshot, knn, linear_probe):
  _module.__class__ = _CallableModule

__all__ = ["fewshot", "knn", "linear_probe"]
