"""FastReID 1.4's compiled Cython rank evaluator, built and timed in FastReID's own venv.

Run by ``benchmarks/eval_rank_benchmark.py --methods fastreid`` with FastReID's interpreter
(``--fastreid-python``, default ``/work/fastreid-venv/bin/python``); this project is not
imported here.

FastReID ships ``fastreid/evaluation/rank_cylib/rank_cy.pyx`` uncompiled (its ``make`` builds it
in place inside the installed package). Here it is compiled once, outside the package and
outside this repository, into ``BUILD_DIR`` (default ``<workdir>/fastreid-rank-cy``): the
``.pyx`` is copied there, cythonized and built with setuptools' ``build_ext`` against the
venv's numpy, with FastReID's own compiler directives (those at the top of the ``.pyx``:
``boundscheck=False, wraparound=False, cdivision=True``) and setuptools' default flags
(``-O3`` on CPython builds). The only prerequisite beyond the venv of
``benchmarks/fastreid_parity.py`` is Cython: ``/work/fastreid-venv/bin/pip install cython``.
The module is then imported from ``BUILD_DIR`` as ``rank_cy``; ``fastreid.evaluation`` itself is
not imported (it fails on numpy 2: ``np.bool``), and nothing in site-packages is touched.

    python fastreid_rank_cy.py CASE_FOLDER BUILD_DIR OUT_PREFIX

times ``evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids, 50)`` (FastReID's
``evaluate_rank(..., use_cython=True)`` calls exactly this) on the case's ``distmat.npy``
(loaded before timing), writes ``OUT_PREFIX.{cmc,AP,INP}.npy`` and prints one JSON line.
"""
from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def build(build_dir: Path):
    """Compile FastReID's rank_cy.pyx into ``build_dir`` (once) and import it."""
    built = list(build_dir.glob("rank_cy*.so"))
    if not built:
        from Cython.Build import cythonize
        from setuptools import Extension
        from setuptools.dist import Distribution

        package = Path(importlib.util.find_spec("fastreid").submodule_search_locations[0])
        build_dir.mkdir(parents=True, exist_ok=True)
        source = build_dir / "rank_cy.pyx"
        shutil.copy(package / "evaluation" / "rank_cylib" / "rank_cy.pyx", source)
        extension = Extension("rank_cy", [str(source)], include_dirs=[np.get_include()])
        dist = Distribution({"ext_modules": cythonize([extension], quiet=True,
                                                      build_dir=str(build_dir / "c"))})
        command = dist.get_command_obj("build_ext")
        command.build_lib, command.build_temp = str(build_dir), str(build_dir / "tmp")
        dist.run_command("build_ext")
    sys.path.insert(0, str(build_dir))
    import rank_cy

    return rank_cy


def main() -> None:
    folder, build_dir, out_prefix = (Path(arg) for arg in sys.argv[1:4])
    rank_cy = build(build_dir)
    q_pids, q_cams, g_pids, g_cams = [np.load(folder / f"{split}_{kind}.npy")
                                      for split in ("query", "gallery")
                                      for kind in ("pids", "camids")]
    distmat = np.load(folder / "distmat.npy")
    cpu = time.process_time()
    started = time.perf_counter()
    cmc, all_ap, all_inp = rank_cy.evaluate_cy(distmat, q_pids, g_pids, q_cams, g_cams, 50)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    for name, values in (("cmc", cmc), ("AP", all_ap), ("INP", all_inp)):
        np.save(f"{out_prefix}.{name}.npy", np.asarray(values))
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "module": rank_cy.__file__,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rank1": float(cmc[0]) * 100, "mAP": float(np.mean(all_ap)) * 100,
                      "mINP": float(np.mean(all_inp)) * 100}))


if __name__ == "__main__":
    main()
