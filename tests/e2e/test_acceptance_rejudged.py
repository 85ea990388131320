"""Gate S judges the finished project: a test that failed in an early wave because it needs a file a later wave
writes (through a subprocess, invisible to its imports) runs again with the last wave.

Found against a provider with realistic latency: whether the early run saw the later file depended on timing.
The later atom is made slow on purpose (the fake provider holds its call) so the early run always misses it.
"""

import json

import pytest

from tests.support.cli import run_mge
from tests.support.fake_llm import FakeLLM, FakeLLMConfig

pytestmark = pytest.mark.e2e

PLAN = """apiVersion: mge.devmatrix.io/v1alpha1
kind: Masterplan
metadata:
  name: calc
spec:
  model: gpt-4o-mini
  budget:
    limitUSD: 5
  requirements: |
    ## Requirements
    ### MUST
    - `python -m calc 1 2` prints 3, computed by `calc.core.add`.
  atoms:
    - id: core
      file: calc/core.py
      language: python
      description: Define add(a, b) returning a + b.
    - id: main
      file: calc/__main__.py
      language: python
      description: "`python -m calc A B` prints add(int(A), int(B))."
      dependsOn: [core]
"""
ANSWERS = {
    "core": "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```",
    "main": (
        "```python\nimport sys\n\nfrom calc.core import add\n\n"
        'if __name__ == "__main__":\n    print(add(int(sys.argv[1]), int(sys.argv[2])))\n```'
    ),
    # It imports calc.core (wave 0) but also runs `python -m calc`, which only wave 1 writes.
    "acceptance/MUST-1": (
        '```python\n"""MUST-1."""\n\nimport subprocess\nimport sys\n\nfrom calc.core import add\n\n\n'
        "def test_must_1():\n    assert add(1, 2) == 3\n"
        '    done = subprocess.run([sys.executable, "-m", "calc", "1", "2"], capture_output=True, text=True)\n'
        '    assert done.stdout == "3\\n", done.stderr\n```'
    ),
}


async def test_a_test_failed_before_the_file_it_needs_existed_is_judged_on_the_finished_project(folder):
    plan = folder / "calc"
    plan.mkdir()
    (plan / "masterplan.yaml").write_text(PLAN)
    (plan / "responses.jsonl").write_text(
        "\n".join(json.dumps({"atom": atom, "attempt": 1, "content": text}) for atom, text in ANSWERS.items())
    )
    provider = FakeLLM(FakeLLMConfig(atom_latency_s={"main": 4.0}))
    provider.load_recording(plan / "responses.jsonl")
    await provider.start()
    try:
        code, output = await run_mge(
            "run", str(plan), "--llm", "openai", "--no-cache",
            "--state-dir", str(folder / "state"), "--out", str(folder / "out"),
            OPENAI_BASE_URL=provider.url, OPENAI_API_KEY="k",
        )  # fmt: skip
    finally:
        await provider.stop()

    assert code == 0, output
    assert "Gate S │ passed: MUST 100%" in output
