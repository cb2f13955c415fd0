"""Every ```python block of the README's "Python usage" section runs, offline, in a fresh process.

Each block runs with a hand-built Hugging Face hub cache holding synthetic weights for the models
it names, HF_HUB_OFFLINE=1 and dead proxies (so nothing can be downloaded), in a folder holding
the `dog.jpg` the snippets open. A `# prints: TEXT` comment must match a line of the output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import effnet
from hub_cache import synthetic_weights, write_hub_cache

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- python-usage:start -->", "<!-- python-usage:end -->"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return []
    section = text[text.index(START) + len(START):text.index(END)]
    return re.findall(r"^```python[ \t]*\n(.*?)^```", section, flags=re.S | re.M)


BLOCKS = python_blocks()


def models_named(code: str) -> set[str]:
    return set(re.findall(r"create_model\(\s*['\"]([\w.-]+)['\"]", code))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with dog.jpg and an offline hub cache for every model the snippets use."""
    root = tmp_path_factory.mktemp("readme")
    for name in sorted(set().union(*map(models_named, BLOCKS))):
        repo_id = effnet.get_config(name).pretrained.hf_hub_id
        write_hub_cache(root / "hf", repo_id, synthetic_weights(name))
    # a 4:3 photo-like gradient, so resize + centre crop both have work to do
    img = Image.linear_gradient("L").resize((400, 300)).convert("RGB")
    img.save(root / "dog.jpg", quality=90)
    return root


def test_section_has_the_seed_snippets() -> None:
    code = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 5
    for needed in ("pretrained=True", "resolve_data_config", "create_transform", "softmax",
                   "imagenet_class_names", "torch.topk", "forward_features", "pre_logits=True",
                   "num_classes=0", "features_only=True", "feature_info", "reset_classifier("):
        assert needed in code, needed


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs_offline(index: int, workdir: Path) -> None:
    code = BLOCKS[index]
    dead_proxy = "http://127.0.0.1:9"
    env = dict(os.environ, HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1",
               TORCH_HOME=str(workdir / "torch"), HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy,
               http_proxy=dead_proxy, https_proxy=dead_proxy, OMP_NUM_THREADS="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "NO_PROXY", "no_proxy"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"README block {index} failed:\n{code}\n{result.stderr}"
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    for expected in re.findall(r"^# prints: (.*)$", code, flags=re.M):
        assert expected.rstrip() in lines, f"block {index}: expected {expected!r} in output:\n{result.stdout}"
    assert not (workdir / "torch").exists(), "a snippet downloaded into torch's cache"


def test_layout_section_names_every_module() -> None:
    """"How the code is laid out" lists each module under src/effnet (a package's __init__.py goes with
    its folder's line), so a new module comes with its line."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## How the code is laid out")
    section = text[start:text.index("\n## ", start + 1)]
    src = README.parent / "src" / "effnet"
    missing = [str(path.relative_to(src)) for path in sorted(src.rglob("*.py"))
               if "__pycache__" not in path.parts and (path.name not in section or
                                                       (path.name == "__init__.py" and path.parent != src
                                                        and f"{path.parent.name}/" not in section))]
    assert not missing, f"README's 'How the code is laid out' does not name {missing}"
