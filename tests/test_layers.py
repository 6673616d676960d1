"""The layers of docs/ARCHITECTURE.md: no module imports a layer above its own.

Every `import` in tandem/ counts, also those inside functions (an import deferred
for speed is still a dependency), read from the source with `ast`."""
import ast
import pathlib

import pytest

from conftest import ROOT

# Layer of each module, by longest matching prefix (docs/ARCHITECTURE.md).
LAYERS = {
    "tandem.models": 0, "tandem.data": 0, "tandem.config_arg": 0,
    "tandem.random_streams": 0, "tandem.hyper": 0,
    "tandem.parallel": 1, "tandem.checkpoint": 1, "tandem.train_state": 1,
    "tandem.optimizers": 1, "tandem.metrics_writer": 1, "tandem.host_malloc": 1,
    "tandem.ssl": 2, "tandem.transfer": 2,
    "tandem.ssl.train": 3, "tandem.transfer.run": 3, "tandem.pretrained": 3,
    "tandem.launch": 3,
    "tandem": 3,
}
PROGRAMS = ("tandem.ssl.train", "tandem.transfer.run")  # Command-line entry points.
NOTEBOOK_API = ("tandem", "tandem.pretrained", "tandem.analysis")
# Modules of one layer that must not import each other.
APART = (("tandem.models", "tandem.data"), ("tandem.data", "tandem.models"))


def _layer(module: str) -> int:
  best = max((p for p in LAYERS if module == p or module.startswith(p + ".")),
             key=len)
  return LAYERS[best]


def _modules(package_dir: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(package_dir.rglob("*.py")):
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  assert any(m.startswith(package) for m in out)
  return out


def _imports(path: pathlib.Path, prefix: str) -> set[str]:
  """What `path` imports: `m` for `import m`, `m.name` for `from m import name`
  (`_real` maps a name that is not a module to its module)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return {m for m in found if m == prefix or m.startswith(prefix + ".")}


MODULES = _modules(pathlib.Path(ROOT) / "tandem", "tandem")


def _real(name: str) -> str:
  """`tandem.transfer.probe.linear_probe` -> `tandem.transfer.probe` (a name
  imported from a module is the module's)."""
  while name not in MODULES and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
  imported = {_real(m) for m in _imports(MODULES[module], "tandem")} - {module}
  above = sorted(m for m in imported if _layer(m) > _layer(module))
  assert not above, f"{module} (layer {_layer(module)}) imports {above}"
  for lower, upper in APART:
    if module.startswith(lower):
      assert not [m for m in imported if m.startswith(upper)], (module, imported)
  if module in NOTEBOOK_API or module.startswith("tandem.analysis."):
    assert not [m for m in imported if m in PROGRAMS], (module, imported)


def test_the_rule_catches_a_violation(tmp_path):
  """The check itself can fail: transfer importing the training program, and
  models importing data, are found."""
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from tandem.ssl import train\n"
                 "from tandem.data import augment\n")
  imported = {_real(m) for m in _imports(bad, "tandem")}
  assert imported == {"tandem.ssl.train", "tandem.data.augment"}
  assert _layer("tandem.ssl.train") > _layer("tandem.transfer.features")
  assert _layer("tandem.data.augment") == _layer("tandem.models.vit") == 0


def test_configs_import_only_configs_and_config_helpers():
  configs = _modules(pathlib.Path(ROOT) / "configs", "configs")
  for module, path in configs.items():
    imported = _imports(path, "tandem")
    assert imported <= {"tandem.config_arg", "tandem.config_arg.parse_arg",
                        "tandem.hyper.product", "tandem.hyper.zipped",
                        "tandem.hyper.concat"}, (
        module, imported)
