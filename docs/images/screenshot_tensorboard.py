"""How docs/images/tensorboard-quickstart.png was taken: TensorBoard on a finished `tunelab run
recipes/quickstart.yaml`, in headless Chromium (Playwright driving Debian's chromium), smoothing off, four tags.

    tensorboard --logdir runs --port 6006 &
    python docs/images/screenshot_tensorboard.py [URL] [OUT.png]
"""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

TAGS = "^(train/loss|eval/score|eval/arithmetic/accuracy|eval/reading/f1)$"


def main(url: str = "http://127.0.0.1:6006", out: str = "docs/images/tensorboard-quickstart.png") -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 860})
        page.goto(f"{url}/?darkMode=false#timeseries", wait_until="networkidle")
        page.wait_for_timeout(4000)
        numbers = page.locator("input[type=number]")
        for i in range(numbers.count()):
            if numbers.nth(i).input_value() == "0.6":  # the smoothing box: raw points, as logged
                numbers.nth(i).fill("0")
                numbers.nth(i).press("Enter")
        page.get_by_text("Ignore outliers in chart scaling").click()
        tags = page.get_by_role("combobox", name="Filter tags (regex)")
        tags.fill(TAGS)
        tags.press("Escape")
        page.mouse.click(700, 845)
        page.mouse.move(120, 700)
        page.wait_for_timeout(3000)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
