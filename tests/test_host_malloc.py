"""tandem.host_malloc: the command-line programs re-execute themselves on tcmalloc."""
import os
import subprocess
import sys

import pytest

from tandem import host_malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="LD_PRELOAD and /proc/self/maps are Linux's")

# Prints its pid, then re-executes (same pid) and prints the result.
_PROGRAM = ("import os, sys; from tandem import host_malloc; "
            "print('pid', os.getpid(), flush=True); "
            "print('result', host_malloc.use_tcmalloc(), os.getpid(), sys.argv[1:], "
            "os.environ.get('LD_PRELOAD', ''))")


def _run(**env_changes):
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", host_malloc.ENV, host_malloc._TRIED)}  # pylint: disable=protected-access
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", _PROGRAM, "--flag=1", "two words"],
                       env=env, capture_output=True, text=True, timeout=60,
                       check=True).stdout.splitlines()
  return out


def _require_library():
  if host_malloc.tcmalloc_library() is None:
    if os.geteuid() == 0:
      pytest.fail("tcmalloc is not installed: `make install` installs the Debian "
                  "package libtcmalloc-minimal4 as root.")
    pytest.skip("tcmalloc is not installed (libtcmalloc-minimal4 needs root).")


def test_reexecutes_on_tcmalloc_with_the_same_pid_and_arguments():
  _require_library()
  out = _run()
  pids = [line.split()[1] for line in out if line.startswith("pid")]
  assert len(pids) == 2 and pids[0] == pids[1], out  # Re-executed, one process.
  (result,) = [line for line in out if line.startswith("result")]
  assert result.startswith(f"result True {pids[0]} ['--flag=1', 'two words'] "), out
  assert "tcmalloc" in result.split("] ", 1)[1], out


def test_keeps_the_system_allocator_when_told_or_already_tried():
  _require_library()
  for env in ({host_malloc.ENV: "0"}, {host_malloc._TRIED: "1"}):  # pylint: disable=protected-access
    out = _run(**env)
    assert len([line for line in out if line.startswith("pid")]) == 1, (env, out)
    assert [line for line in out if line.startswith("result")][0].startswith(
        "result False"), (env, out)
