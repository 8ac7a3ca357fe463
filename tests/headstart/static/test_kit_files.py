"""The JavaScript client's files as a page or a build gets them: headstart.js with the kit
stays small, headstart.d.ts type-checks a page's use of it (TypeScript from npm), the ES module
loads, and the ingress serves each of them."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from actors.ingress.routes import CLIENT_FILES
from tests.browser import STATIC, js_dependency

#: The issue's budget for headstart.js, kit included, gzipped.
MAX_GZIPPED_BYTES = 20 * 1024

USAGE = """
import Headstart, { type Decision, type Mount, type TourStep } from "./headstart.js";

const hs = new Headstart({ apiKey: "frontend-key", baseUrl: "https://headstart.example.com" });

export async function onboard(userId: string, userHash: string): Promise<number> {
  hs.identify(userId, userHash);
  const kit: Mount = await hs.mount(userId, {
    context: { device_type: "desktop" },
    container: "#onboarding",
    locale: "ar",
    labels: { next: "Onward" },
    targetTimeoutMs: 3000,
    onDecision: (d: Decision) => console.log(d.surfaces?.tour?.reason),
  });
  const decision: Decision = await kit.refresh({ device_type: "mobile" });
  const steps: TourStep[] = decision.tutorial?.tour ?? [];
  const urls = (decision.journey ?? []).map((s) => s.url ?? "");
  kit.unmount();
  // @ts-expect-error: a user id is a string
  await hs.mount(42);
  // @ts-expect-error: surfaces are tour, tooltip and banner
  decision.surfaces?.checklist;
  const rtl: boolean = Headstart.isRtl("he") && window.Headstart.isRtl("ar");
  return steps.length + urls.length + Number(rtl) + Headstart.kitLabels("de").next.length;
}
"""

TSCONFIG = """{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2022", "module": "esnext",
 "moduleResolution": "bundler", "lib": ["es2022", "dom"]}, "files": ["usage.ts"]}"""


def test_headstart_js_with_the_kit_is_at_most_20_kb_gzipped() -> None:
    size = len(gzip.compress((STATIC / "headstart.js").read_bytes(), compresslevel=9))
    assert size <= MAX_GZIPPED_BYTES, f"headstart.js is {size} bytes gzipped (budget {MAX_GZIPPED_BYTES})"


def test_the_type_declarations_check_a_pages_use_of_the_client(tmp_path: Path) -> None:
    tsc = js_dependency(".bin/tsc")
    (tmp_path / "headstart.d.ts").write_text((STATIC / "headstart.d.ts").read_text())
    (tmp_path / "usage.ts").write_text(USAGE)
    (tmp_path / "tsconfig.json").write_text(TSCONFIG)
    checked = subprocess.run([str(tsc), "-p", str(tmp_path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_es_module_loads_in_node_too() -> None:
    script = (
        f'import Headstart, {{ Headstart as Named }} from "{(STATIC / "headstart.mjs").as_uri()}";'
        'console.log(Headstart === Named, typeof new Headstart({}).decide, Headstart.isRtl("ar"));'
    )
    ran = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True
    )
    assert ran.stdout.split() == ["true", "function", "true"]


def test_the_ingress_serves_each_client_file_from_the_package() -> None:
    assert set(CLIENT_FILES) == {"headstart.js", "headstart.mjs", "headstart.d.ts", "headstart-react.js"}
    for name in CLIENT_FILES:
        assert (STATIC / name).is_file(), name
