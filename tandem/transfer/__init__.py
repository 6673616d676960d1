"""Transfer evaluators on frozen features, callable on any arrays from a notebook:

    tandem.transfer.fewshot(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=(0,))
    tandem.transfer.linear_probe(train_x, train_y, test_x, test_y)
    tandem.transfer.knn(train_x, train_y, test_x, test_y, ks=(20, 200))

These are the array forms of the evaluators `tandem.transfer.ridge` (few-shot),
`probe` (linear probe) and `neighbors` (k-NN), whose `evaluate_task` the suite
runner and the evaluations inside pretraining call (`protocol.py`).
"""
from tandem.transfer.neighbors import knn
from tandem.transfer.probe import linear_probe
from tandem.transfer.ridge import fewshot

__all__ = ["fewshot", "knn", "linear_probe"]
