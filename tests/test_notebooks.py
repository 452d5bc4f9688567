"""Executes every colab/*.ipynb in its small setting (MEMJAX_SMALL=1).

Cells tagged `skip-execution` (the install cell) are left out.
"""

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_small_setting(path, monkeypatch):
  monkeypatch.setenv("MEMJAX_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(path, as_version=4)
  nb.cells = [c for c in nb.cells if "skip-execution" not in c.metadata.get("tags", [])]
  client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors


def test_notebooks_are_committed_without_outputs():
  assert NOTEBOOKS, "no notebooks in colab/"
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells), path
    assert "skip-execution" in cells[0].metadata.get("tags", []), path
