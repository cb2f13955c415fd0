"""The `effnet serve` web page in a real headless Chromium: upload a photo, see its top-1 label.

Needs Debian's `chromium` (CI's .ci/run installs it) and Playwright's Python package (the test
extra); Playwright's own browser downloads are not used. Skips, saying why, when either is absent.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from effnet.loading import add_model_arguments, load_model  # noqa: E402
from effnet.serve import Options, create_app, load, prepare  # noqa: E402
from serve_support import LABELS, ThreadServer, make_model_dir  # noqa: E402

PHOTO = Path(__file__).parent / "fixtures" / "transforms" / "flower.jpg"
OTHER_PHOTO = PHOTO.with_name("china.jpg")
# builds the DataTransfer a drag from the desktop would carry, from [name, base64] pairs
DROP_FILES = """(files) => {
  const dt = new DataTransfer();
  for (const [name, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
  }
  return dt;
}"""
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    found = os.environ.get("EFFNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).is_file() else None


BROWSER = _chromium()
if BROWSER is None:
    pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)", allow_module_level=True)


def _expected_top1(model_dir: Path) -> str:
    loaded = load_model(f"local-dir:{model_dir}", device="cpu")
    x = loaded.transform(Image.open(io.BytesIO(PHOTO.read_bytes())).convert("RGB"))[None]
    with torch.no_grad():
        return LABELS[int(loaded.model(x).argmax())]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = make_model_dir(tmp_path_factory.mktemp("serve_browser") / "model")
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model", f"local-dir:{model_dir}", "--device", "cpu"])
    srv = ThreadServer(create_app(prepare(load(args), "fp32", 4), Options(max_batch=4, max_wait_ms=5)))
    srv.wait()
    yield srv, model_dir
    srv.close()


def test_page_classifies_an_uploaded_photo(page_server: Any, tmp_path: Path) -> None:
    srv, model_dir = page_server
    expected = _expected_top1(model_dir)
    external: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.on("request", lambda r: None if r.url.startswith((srv.url, "blob:", "data:"))
                    else external.append(r.url))
            page.goto(srv.url + "/")
            page.wait_for_selector("#card-list dd")  # the model card came from /v1/model
            card = page.inner_text("#card")
            assert "3 × 64 × 64" in card and "apple, bicycle" in card and "fp32" in card
            page.set_input_files("#file", str(PHOTO))
            page.wait_for_selector(".result .row.top1", timeout=30_000)
            top1 = page.inner_text(".result .row.top1 .label")
            rows = page.locator(".result .row").count()
            status = page.inner_text("#status")
            page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
            # drag and drop two photos onto the drop zone: one answer per photo, in order
            dropped = page.evaluate_handle(DROP_FILES, [[p.name, base64.b64encode(p.read_bytes()).decode()]
                                                        for p in (PHOTO, OTHER_PHOTO)])
            page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
            page.locator(".result").nth(1).wait_for(timeout=30_000)
            names = page.locator(".result .name").all_inner_texts()
            dropped_top1 = page.locator(".result .row.top1 .label").all_inner_texts()
        finally:
            browser.close()
    shot = tmp_path / "serve_page.png"
    keep = os.environ.get("EFFNET_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "serve_page.png")
    assert top1 == expected
    assert names == [PHOTO.name, OTHER_PHOTO.name] and dropped_top1[0] == expected and dropped_top1[1] in LABELS
    assert rows == 5 and "server latency" in status and "ms" in status
    assert not external, f"the page fetched external resources: {external}"
    assert shot.stat().st_size > 10_000
