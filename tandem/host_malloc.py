"""The command-line programs run on tcmalloc when it is installed.

XLA:CPU allocates each step's temporary buffers afresh: one 87 MB block per step
of the demo's Barlow Twins CNN at batch 256. glibc's malloc serves blocks that
large with mmap and unmaps them on free. Each step then faults in freshly zeroed
pages: a 200-step demo run took 5.2-5.6 M minor page faults and 15-19 s of system
time (of ~95 s CPU). tcmalloc keeps freed memory for reuse: 0.25-0.29 M faults,
1.6-2.0 s of system time, and the demo's steady rate rose 1.1-1.4x. It also made
the ResNet-18 compile faster (BENCHMARKS.md, "Host memory allocator").

The dynamic loader reads LD_PRELOAD only when a process starts. So
`use_tcmalloc()` re-executes the running command with tcmalloc preloaded. It does
this only when:
- the library is installed (Debian/Ubuntu: `libtcmalloc-minimal4`, installed by
  `make install` as root);
- it is not yet loaded;
- TANDEM_TCMALLOC is not `0`.

`execve` keeps the process id, arguments, environment and open files. So srun,
sbatch, signals and a parent waiting on the pid see one process. Call it first
in `if __name__ == "__main__"`, before the heavy imports. Library code and
notebooks never call it (a Jupyter kernel can set LD_PRELOAD in its kernel spec).
"""
import ctypes.util
import os
import sys

ENV = "TANDEM_TCMALLOC"  # "0": keep the system allocator.
_TRIED = "TANDEM_TCMALLOC_PRELOADED"  # Set across the re-execution: no loop.


def tcmalloc_library() -> str | None:
  """The installed tcmalloc's file name (for LD_PRELOAD), or None."""
  return (ctypes.util.find_library("tcmalloc_minimal")
          or ctypes.util.find_library("tcmalloc"))


def tcmalloc_loaded() -> bool:
  """Whether this process runs on tcmalloc (Linux; False elsewhere)."""
  try:
    with open("/proc/self/maps") as f:
      return "libtcmalloc" in f.read()
  except OSError:
    return False


def use_tcmalloc() -> bool:
  """Re-executes this command on tcmalloc when it can, else returns.

  Returns whether the process runs on tcmalloc; when it re-executes, it does not
  return. It does nothing outside Linux, with TANDEM_TCMALLOC=0, without the
  library, or when a re-execution already tried (and the loader refused it).
  """
  if not sys.platform.startswith("linux") or os.environ.get(ENV) == "0":
    return False
  if tcmalloc_loaded():
    return True
  library = tcmalloc_library()
  if library is None or os.environ.get(_TRIED):
    return False
  preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)
  env = dict(os.environ, LD_PRELOAD=preload, **{_TRIED: "1"})
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
