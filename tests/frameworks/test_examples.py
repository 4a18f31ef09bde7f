"""The framework examples run offline and do what their docstrings say.

LangChain, the Agents SDK and pydantic-ai run with the SDKs of the main
environment (the ``frameworks`` extra); instructor and LlamaIndex pin openai
2.x and run in the version-matrix job (``.ci/sdk_matrix``), so with openai 3
they skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from .conftest import need

EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "frameworks"
NEEDS = {"langchain_app.py": ("langchain_openai", "langchain_anthropic"),
         "openai_agents_app.py": ("agents",), "pydantic_ai_app.py": ("pydantic_ai",),
         "instructor_app.py": ("instructor",), "llamaindex_app.py": ("llama_index",)}
OPENAI_2 = ("instructor_app.py", "llamaindex_app.py")  # their pins exclude openai 3
EXPECTED = {
    "langchain_app.py": [r"streamed \d+ chunks", r"trial stopped after [1-9]\d* calls in 0\.\d\ds",
                         r"retry worth it: False"],
    "openai_agents_app.py": [r"budget stop after [1-9]\d* runs; the refused run ended in 0\.0",
                             r"retry worth it: False"],
    "pydantic_ai_app.py": [r"openai: stopped after [1-9]\d* runs with ModelQuotaExceededError "
                           r"\(retry_after=None\) from OpenAIBudgetExceededError",
                           r"anthropic: stopped after [1-9]\d* runs with ModelQuotaExceededError "
                           r"\(retry_after=None\) from AnthropicBudgetExceededError"],
    "instructor_app.py": [r"budget stop after [1-9]\d* structured calls in \d\.\d\ds",
                          r"last answer: City"],
    "llamaindex_app.py": [r"complete: \w", r"budget stop after [1-9]\d* calls in \d\.\d\ds"],
}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_framework_example_runs(name: str, tmp_path: Path) -> None:
    if name in OPENAI_2 and int(openai.__version__.split(".")[0]) >= 3:
        pytest.skip(f"{name} needs openai 2.x: it runs in the version-matrix job")
    need(*NEEDS[name])
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    env.pop("LLM_GOVERNOR_CONFIG", None)
    proc = subprocess.run([sys.executable, "-W", "error::ResourceWarning", str(EXAMPLES / name)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ResourceWarning" not in proc.stderr and "Exception ignored" not in proc.stderr, \
        proc.stderr[-3000:]
    out = proc.stdout
    for pattern in EXPECTED[name]:
        assert re.search(pattern, out), (pattern, out[-2000:])
    money = re.findall(r"charged \$([\d.]+), billed \$([\d.]+)", out)
    assert money, out[-2000:]
    for charged, billed in money:  # exact costs, raw-response streams included
        assert Decimal(charged) == Decimal(billed) > 0
