"""The plugin-author pages cannot rot.

``docs/plugins/writing.md`` shows the files of ``examples/plugin-template`` (each code block
whose first line names a file must be that file, byte for byte), and that template is really
installed and its own tests run. ``docs/plugins/hooks.md`` documents every hook of the
contract with the hookspec's own argument names, and no hook that does not exist.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pluggy
import pytest

from plugbus import Plugin
from plugbus.core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
WRITING = ROOT / "docs" / "plugins" / "writing.md"
HOOKS = ROOT / "docs" / "plugins" / "hooks.md"
TEMPLATE = ROOT / "examples" / "plugin-template"

FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```$", re.M | re.S)
#: A block "tagged with a file": its first line is a comment holding only a repository path.
FILE_TAG = re.compile(r"^(?:#|//) ([\w.-]+(?:/[\w.-]+)+)$")
HEADING = re.compile(r"^### `(plugbus_\w+)\(([^)]*)\)`$", re.M)
KIND = re.compile(r"\*\*(Awaited|Collected)\*\*")


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced code block of a markdown page."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def hookspec_args() -> dict[str, tuple[str, ...]]:
    """Every hook of the contract, with its argument names."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name: tuple(inspect.signature(func).parameters)
        for name, func in vars(hookspecs).items()
        if name.startswith("plugbus_") and hasattr(func, marker)
    }


def hook_sections() -> dict[str, tuple[tuple[str, ...], str]]:
    """Documented hook -> (argument names in its heading, the section's text)."""
    text = HOOKS.read_text(encoding="utf-8")
    headings = list(HEADING.finditer(text))
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for i, m in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[m.end() : end].split("\n## ")[0]
        args = tuple(a.strip() for a in m.group(2).split(",") if a.strip())
        assert m.group(1) not in out, f"{m.group(1)} is documented twice"
        out[m.group(1)] = (args, body)
    return out


# -- writing.md ----------------------------------------------------------------------------


def test_every_file_shown_in_the_writing_guide_is_the_templates_file_byte_for_byte() -> None:
    shown = {}
    for _lang, block in code_blocks(WRITING):
        tag = FILE_TAG.match(block.split("\n", 1)[0])
        if tag:
            shown[tag.group(1)] = block
    assert set(shown) >= {
        "examples/plugin-template/pyproject.toml",
        "examples/plugin-template/plugbus_echo/__init__.py",
        "examples/plugin-template/tests/test_echo.py",
        "examples/plugin-template/tests/test_echo_hooks.py",
    }
    for path, block in shown.items():
        assert (ROOT / path).is_file(), (
            f"{WRITING.relative_to(ROOT)} shows {path}, which does not exist"
        )
        assert (ROOT / path).read_text(encoding="utf-8") == block, (
            f"the block for {path} in {WRITING.relative_to(ROOT)} differs from the file; copy it again"
        )


def test_the_template_imports_only_from_plugbus() -> None:
    for path in TEMPLATE.rglob("*.py"):
        if "build" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) plugbus\.(core|api|plugins)\b", text, re.M), path


def test_the_template_installs_and_its_own_tests_pass(tmp_path: Path) -> None:
    # A copy, so that building leaves no build/ or *.egg-info in the work tree.
    source = tmp_path / "plugin-template"
    shutil.copytree(
        TEMPLATE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
    )
    assert list(site.glob("plugbus_echo-*.dist-info"))
    run = tmp_path / "run"  # neither the source nor the repository is on sys.path from here
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PLUGBUS_")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(source / "tests"), "-p", "no:cacheprovider", "-q"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    tests = sum(
        len(re.findall(r"^(?:async )?def test_", f.read_text(encoding="utf-8"), re.M))
        for f in (source / "tests").glob("test_*.py")
    )
    assert re.search(rf"\b{tests} passed\b", output), output


# -- hooks.md ------------------------------------------------------------------------------


def test_every_hook_is_documented_with_the_hookspecs_argument_names() -> None:
    specs = hookspec_args()
    documented = hook_sections()
    missing = sorted(set(specs) - set(documented))
    unknown = sorted(set(documented) - set(specs))
    assert not missing, f"hooks missing from {HOOKS.relative_to(ROOT)}: {missing}"
    assert not unknown, f"{HOOKS.relative_to(ROOT)} documents hooks that do not exist: {unknown}"
    for name, args in specs.items():
        assert documented[name][0] == args, (
            f"{name}: documented as ({', '.join(documented[name][0])}), the hookspec takes ({', '.join(args)})"
        )


def test_the_hooks_page_names_no_hook_that_does_not_exist() -> None:
    named = set(re.findall(r"\bplugbus_[a-z_]+\b", HOOKS.read_text(encoding="utf-8")))
    assert not named - set(hookspec_args()), f"not hooks: {sorted(named - set(hookspec_args()))}"


def test_every_documented_argument_is_described_and_the_call_kind_is_right() -> None:
    for name, (args, body) in hook_sections().items():
        if name not in hookspec_args():
            continue  # reported by the test above
        for arg in args:
            assert re.search(rf"^- `{arg}`", body, re.M), (
                f"{name}: argument {arg!r} is not described"
            )
        kind = KIND.search(body)
        assert kind, f"{name}: say **Awaited** or **Collected**"
        expected = "Awaited" if name in hookspecs.AWAITED_HOOKS else "Collected"
        assert kind.group(1) == expected, (
            f"{name} is {expected.lower()}, the page says {kind.group(1)}"
        )


def test_the_hook_examples_are_valid_plugins() -> None:
    """Each Python example on the hooks page runs, and its implementations fit the contract
    (pluggy checks hook names and argument names when registering)."""
    blocks = [block for lang, block in code_blocks(HOOKS) if lang == "python"]
    assert blocks
    for i, block in enumerate(blocks):
        module = types.ModuleType(f"hooks_md_example_{i}")
        exec(compile(block, f"{HOOKS.name} example {i + 1}", "exec"), module.__dict__)
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        plugins: list[object] = [
            obj(obj.Settings())
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin
        ]
        if any(hasattr(f, f"{hookspecs.PROJECT_NAME}_impl") for f in vars(module).values()):
            plugins.append(module)
        assert plugins, f"example {i + 1} defines no plugin:\n{block}"
        for plugin in plugins:
            pm.register(plugin)
        pm.check_pending()


@pytest.mark.parametrize("page", [WRITING, HOOKS], ids=lambda p: p.name)
def test_every_python_block_compiles(page: Path) -> None:
    for lang, block in code_blocks(page):
        if lang == "python":
            compile(block, page.name, "exec")
