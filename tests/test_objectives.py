"""One objective lookup (`tandem.ssl.objectives`), and `tandem.load` without the
training program."""
import pytest

from tandem.ssl import clip
from tandem.ssl import image_text
from tandem.ssl import objectives
from tandem.ssl import train
from conftest import bt_config, run_in_fresh_python


@pytest.mark.parametrize("name", ["barlow_twins", "simclr", "mae", "clip", "siglip"])
def test_every_objective_is_found_with_its_optional_parts(name):
  objective = objectives.get_objective(name)
  assert objective.name == name and callable(objective.make_loss_fn)
  if name in ("clip", "siglip"):
    assert objective.init_inputs is image_text.init_inputs
  else:
    assert objective.init_inputs is objectives.default_init_inputs
  assert (objective.param_bounds is clip.param_bounds if name == "clip"
          else objective.param_bounds is objectives.no_param_bounds)


def test_unknown_objective_is_named():
  with pytest.raises(ValueError, match="Unknown objective 'swav'"):
    objectives.get_objective("swav")
  with pytest.raises(ValueError, match="lacks"):
    objectives.get_objective("siamese")  # A helper module, not an objective.


def test_load_does_not_import_the_training_program(tiny_data_dir, tmp_path):
  """A notebook's `tandem.load` needs models and checkpoints only: not the train
  loop, TFDS or grain, and it defines no command-line flags."""
  train.train(bt_config(tiny_data_dir), str(tmp_path))
  code = (
      "import sys, tandem\n"
      f"model = tandem.load({str(tmp_path)!r})\n"
      "assert model.step == 2, model.step\n"
      "heavy = [m for m in ('tandem.ssl.train', 'tensorflow_datasets', 'grain',\n"
      "                     'tandem.data.input_pipeline') if m in sys.modules]\n"
      "assert not heavy, heavy\n"
      "from absl import flags\n"
      "assert 'config' not in flags.FLAGS, 'a tandem flag was defined'\n")
  run_in_fresh_python(code)
