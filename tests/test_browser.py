"""The creator's page in a real browser: headless Chromium (selenium + the system chromedriver) against the
app served by uvicorn on 127.0.0.1. Skips when chromium, chromedriver or selenium is not installed.

CI needs: apt `chromium chromium-driver fonts-noto-cjk` and pip `selenium`. Screenshots (empty page, two drafts,
cold-start panel) go to the test's tmp folder; set NOTELLM_SCREENSHOT_DIR to keep copies elsewhere.
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from notellm.inference.generate import KnnTagger
from notellm.serving.app import create_app
from notellm.serving.components import ColdStartScorer
from test_serving import world  # noqa: F401  (the shared module fixture)
from test_serving_readable import ReadablePopularity
from test_serving_coldstart import coldstart_dir  # noqa: F401  (a tiny cold-start model folder)

CHROMIUM = os.environ.get("CHROME_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="headless browser test needs apt packages chromium and chromium-driver")

DRAFT_A = {"title": "火锅分享", "content": "今天吃到一家超好吃的火锅，味道绝了", "hashtags": ["美食"]}
DRAFT_B = {"title": "周末去了雪山，风景太美了", "content": "周末去了雪山，风景太美了，推荐大家去。" * 3,
           "hashtags": ["旅行", "攻略", "雪山"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(world, coldstart_dir):  # noqa: F811
    import uvicorn

    app = create_app(index=world["index"], embedder=world["embedder"], notes=world["table"],
                     tagger=KnnTagger(world["rows"], k=10, n_tags=3), popularity=ReadablePopularity(),
                     coldstart=ColdStartScorer(coldstart_dir, "en"))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip package selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,1500", "--lang=zh-CN"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def expected_titles(world, draft, k=5):  # noqa: F811
    """The k nearest indexed notes of the draft, by brute-force cosine over the stored vectors."""
    vector = world["embedder"].encode([{"note_id": "d", **draft, "category": [], "image_paths": []}])[0]
    order = np.argsort(-(world["vectors"] @ vector), kind="stable")[:k]
    return [world["rows"][i]["title"] for i in order]


def fill(driver, draft_id, draft):
    from selenium.webdriver.common.by import By

    form = driver.find_element(By.CSS_SELECTOR, f"#{draft_id} form")
    for name, value in (("title", draft["title"]), ("content", draft["content"]),
                        ("hashtags", " ".join(f"#{t}" for t in draft["hashtags"]))):
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)


def results_of(driver, draft_id):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    for part in ("popularity", "tags", "similar"):
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#{draft_id} .result.{part}[data-state=ok]")))
    root = driver.find_element(By.ID, draft_id)
    return {
        "score": root.find_element(By.CSS_SELECTOR, "[data-testid=score]").text,
        "tags": [c.text for c in root.find_elements(By.CSS_SELECTOR, "[data-testid=tags] .chip")],
        "category": root.find_element(By.CSS_SELECTOR, "[data-testid=category]").text,
        "similar": [t.text for t in root.find_elements(By.CSS_SELECTOR, ".similar-item .title-text")],
        "similar_text": root.find_element(By.CSS_SELECTOR, "[data-testid=similar]").text,
    }


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def screenshot(driver, folder, name):
    """Into the test's tmp folder (and NOTELLM_SCREENSHOT_DIR when set); returns the path."""
    path = Path(folder) / name
    driver.save_screenshot(str(path))
    extra = os.environ.get("NOTELLM_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def rendering_fonts(driver, selector):
    """The platform fonts Chromium drew a node's text with (DevTools CSS.getPlatformFontsForNode)."""
    driver.execute_cdp_cmd("DOM.enable", {})
    driver.execute_cdp_cmd("CSS.enable", {})
    root = driver.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = driver.execute_cdp_cmd("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return driver.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]


def test_a_creator_compares_two_drafts(browser, server, world, shots):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "status"), "32 notes indexed"))
    screenshot(browser, shots, "empty.png")

    # an empty draft is refused on the page, before any request
    browser.find_element(By.CSS_SELECTOR, "#draft-b button.analyse").click()
    error = browser.find_element(By.CSS_SELECTOR, "#draft-b .form-error")
    assert error.is_displayed() and "title or a body" in error.text

    fill(browser, "draft-a", DRAFT_A)
    fill(browser, "draft-b", DRAFT_B)
    browser.find_element(By.ID, "analyse-all").click()
    a, b = results_of(browser, "draft-a"), results_of(browser, "draft-b")

    # Ridge rule: 1 + 0.1 * title chars + 0.02 * content chars + 0.5 * hashtags
    score_a = 1 + 0.1 * len(DRAFT_A["title"]) + 0.02 * len(DRAFT_A["content"]) + 0.5 * 1  # 1 + .4 + .34 + .5 = 2.24
    score_b = 1 + 0.1 * len(DRAFT_B["title"]) + 0.02 * len(DRAFT_B["content"]) + 0.5 * 3  # 1 + 1.2 + 1.14 + 1.5 = 4.84
    assert a["score"] == f"{score_a:.2f}" and b["score"] == f"{score_b:.2f}"
    assert sorted(a["tags"]) == sorted(["#美食", "#探店", "#火锅"])
    assert a["category"].endswith("美食 › 火锅")
    assert a["similar"] == expected_titles(world, DRAFT_A)
    assert b["similar"] == expected_titles(world, DRAFT_B)
    banner = browser.find_element(By.ID, "comparison").text
    assert "Draft B is predicted more popular" in banner and f"{score_b - score_a:.2f} higher" in banner
    assert f"{score_b:.2f} vs {score_a:.2f}" in banner  # the winner's score first
    assert not any(r["note_id"] in a["similar_text"] for r in world["rows"])  # ids only on hover
    # the score read as a percentile (the model's held-out notes: quantiles 0..10) with its 80% interval
    percentile = browser.find_element(By.CSS_SELECTOR, "#draft-a [data-testid=percentile]").text
    below = sum(q < score_a for q in ReadablePopularity.heldout["score_quantiles"])
    assert percentile == f"{round(100 * below / 101)}rd percentile"  # 23 of 101 quantiles below 2.24: 23rd
    interval = browser.find_element(By.CSS_SELECTOR, "#draft-a [data-testid=interval]").text
    assert f"likely between {score_a - 0.6:.2f} and {score_a + 0.4:.2f}" in interval
    screenshot(browser, shots, "compare.png")

    # two drafts within the model's usual error (0.5): too close to call
    fill(browser, "draft-b", {**DRAFT_A, "title": DRAFT_A["title"] + "!"})  # +0.1
    browser.find_element(By.CSS_SELECTOR, "#draft-b button.analyse").click()
    WebDriverWait(browser, 60).until(ec.text_to_be_present_in_element((By.ID, "comparison"), "Too close to call"))
    assert "differ by 0.10" in browser.find_element(By.ID, "comparison").text
    screenshot(browser, shots, "too-close.png")

    # a suggested tag the draft does not have yet is added with one click
    chip = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#draft-a [data-testid=tags] .chip")
                if c.text == "#火锅")
    chip.click()
    tags_field = browser.find_element(By.CSS_SELECTOR, "#draft-a input[name=hashtags]")
    assert tags_field.get_attribute("value") == "#美食 #火锅"


def test_chinese_text_is_drawn_with_a_cjk_font(browser, server):
    browser.get(server + "/")
    fonts = rendering_fonts(browser, "h1 .zh")  # 笔记助手
    cjk = [f for f in fonts if any(n in f["familyName"] for n in ("CJK", "Source Han", "WenQuanYi", "PingFang",
                                                                     "YaHei", "Noto Sans SC"))]
    assert cjk and sum(f["glyphCount"] for f in cjk) == 4, f"Chinese drawn with {fonts}: install fonts-noto-cjk"


def test_the_past_posts_panel_gives_a_cold_start_prediction(browser, server, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, "status"), "notes indexed"))
    browser.find_element(By.CSS_SELECTOR, "#past-panel summary").click()
    browser.find_element(By.ID, "past-posts").send_keys("火锅分享 | 2.5\n杭州咖啡馆 | 4.1")
    fill(browser, "draft-a", DRAFT_A)
    browser.find_element(By.CSS_SELECTOR, "#draft-a button.analyse").click()
    section = WebDriverWait(browser, 60).until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, "#draft-a .result.coldstart[data-state=ok]")))
    assert section.is_displayed()
    text = section.text  # a random tiny model may not answer with a number: either way the panel says so
    assert "from your 2 past posts" in text or "did not answer with a number" in text
    assert not browser.find_element(By.CSS_SELECTOR, "#draft-b .result.coldstart").is_displayed()
    screenshot(browser, shots, "coldstart.png")
    print(f"screenshots in {shots}")
