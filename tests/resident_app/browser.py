"""Drive the resident web app in Debian's chromium with Playwright (NOTES.md, "Flet 1.0.5
in the browser") and screenshot each screen at 390×844: sign-in, binding (both steps),
Home and 我的. Not a pytest module yet (browser tests are not in ``make test``); run it
against a running API, the SMS fake and ``shuiwu resident-app --web``::

    python -m tests.resident_app.browser --app http://127.0.0.1:8550 --sms http://127.0.0.1:PORT \\
        --account-no 0100000004 --name 张三 --phone 13900000999 --out docs/screenshots/resident

Codes are read from what the SMS fake (Aliyun's) was asked to send, as a resident reads
their phone. Needs ``apt-get install chromium`` and ``pip install playwright``, never
``playwright install``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
PHONE_VIEWPORT = {"width": 390, "height": 844}


def code_sent_to(sms_url: str, phone: str) -> str:
    """The newest code the SMS fake was asked to text to ``phone``."""
    for _ in range(50):
        seen = httpx.get(f"{sms_url}/_control/requests").json()["requests"]
        for request in reversed(seen):
            if request["path"] != "/" or request["method"] != "POST":
                continue
            form = dict(parse_qsl(request["body"], keep_blank_values=True))
            if form.get("PhoneNumbers") == phone:
                return str(json.loads(form["TemplateParam"])["code"])
        time.sleep(0.1)
    raise AssertionError(f"no code was sent to {phone}")


def open_app(page: Page, url: str) -> None:
    """Load the app and turn on Flutter's semantics so buttons and fields are DOM nodes."""
    page.goto(url)
    page.wait_for_selector("flutter-view", timeout=60_000)
    page.wait_for_selector("flt-semantics-placeholder", state="attached", timeout=60_000)
    page.locator("flt-semantics-placeholder").dispatch_event("click")
    page.get_by_role("button", name="获取验证码").wait_for(timeout=30_000)


def shoot(page: Page, out: Path, name: str) -> None:
    page.wait_for_timeout(800)  # the last frame (fonts, a progress ring ending) is drawn
    page.screenshot(path=str(out / f"{name}.png"))
    print(f"{out / name}.png")


def fill(page: Page, label: str, value: str) -> None:
    field = page.get_by_role("textbox", name=label)
    field.click()
    field.fill(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", required=True)
    parser.add_argument("--sms", required=True)
    parser.add_argument("--account-no", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--holder-phone", required=True, help="the household's registered phone (binding code)")
    parser.add_argument("--phone", default="13900000999", help="the resident signing in")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots/resident"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport=PHONE_VIEWPORT, device_scale_factor=2, locale="zh-CN")
        try:
            walk(page, args)
        except Exception:
            page.screenshot(path=str(args.out / "failed.png"))
            raise
        finally:
            browser.close()


def walk(page: Page, args: argparse.Namespace) -> None:
    """Sign in, bind in two steps, Home, 我的: a screenshot of each."""
    if True:
        open_app(page, args.app)
        shoot(page, args.out, "01-sign-in")

        fill(page, "手机号", args.phone)
        page.get_by_role("button", name="获取验证码").click()
        page.get_by_text("验证码已发送至", exact=False).wait_for()
        fill(page, "验证码", code_sent_to(args.sms, args.phone))
        shoot(page, args.out, "02-sign-in-code-sent")
        page.get_by_role("button", name="登录").click()

        page.get_by_text("绑定户号", exact=False).first.wait_for(timeout=20_000)
        shoot(page, args.out, "03-bind")
        fill(page, "户号 (缴费号)", args.account_no)
        fill(page, "户主姓名", args.name)
        page.get_by_role("button", name="下一步").click()
        page.get_by_text("验证户主手机").wait_for(timeout=20_000)
        shoot(page, args.out, "04-bind-code")
        fill(page, "户主收到的验证码", code_sent_to(args.sms, args.holder_phone))
        page.get_by_role("button", name="确认绑定").click()

        page.get_by_text("最新读数").wait_for(timeout=20_000)
        shoot(page, args.out, "05-home")
        page.get_by_role("tab", name="我的").or_(page.get_by_text("我的").last).first.click()
        page.get_by_text("我的户号").wait_for(timeout=20_000)
        page.get_by_text(args.account_no, exact=False).first.wait_for(timeout=20_000)
        shoot(page, args.out, "06-me")


if __name__ == "__main__":
    main()
