"""`python -m benchmarks.peak_rss OUT_FILE MODULE ARGS...`: run MODULE as __main__, then write this process's
peak RSS in MiB to OUT_FILE (a child's own figure, unlike RUSAGE_CHILDREN's running maximum)."""

import resource
import runpy
import sys

if __name__ == "__main__":
    out_file, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        with open(out_file, "w") as handle:
            handle.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
