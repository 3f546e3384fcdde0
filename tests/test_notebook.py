"""examples/notebook.ipynb, executed by nbclient on a real ipykernel, top to
bottom and then with its App cell run again (as a user re-runs a cell),
against memory:// and the real broker. Any cell error fails the test.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"
ROOT = NOTEBOOK.parent.parent


def _app_cell(notebook: nbformat.NotebookNode) -> int:
    (index,) = [i for i, c in enumerate(notebook.cells) if "app = replies.App(" in c.source]
    return index


# The notebook uses kafka-python's default settings, whose 45 s session
# timeout makes every group join take 22 s on Tansu: on a broker, for Kafka.
@pytest.fixture(
    params=["memory", pytest.param("kafka", marks=[pytest.mark.integration, pytest.mark.kafka_only])]
)
def notebook_broker(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return "kafka://" + request.getfixturevalue("kafka_bootstrap")


def test_the_notebook_runs_and_its_app_cell_runs_again(
    notebook_broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment (and imports this tree's code).
    monkeypatch.setenv("REPLIES_BROKER", notebook_broker)
    monkeypatch.setenv("REPLIES_NOTEBOOK_APP_ID", f"nb{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    cells = notebook.cells
    last = len(cells) - 1  # closes the App
    with client.setup_kernel():
        for index in range(last):
            client.execute_cell(cells[index], index)  # raises CellExecutionError
        # The App cell again, and every ask after it; then the close.
        for index in [*range(_app_cell(notebook), last), last]:
            client.execute_cell(cells[index], index)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    app_cell = notebook.cells[_app_cell(notebook)]
    warned = "".join(o.get("text", "") for o in app_cell.outputs if o.get("name") == "stderr")
    assert "stopped serving them" in warned, app_cell.outputs
    join_cell = next(c for c in notebook.cells if "double.join" in c.source)
    assert join_cell.outputs[-1]["data"]["text/plain"] == "40"
