"""Configuration errors, as a user meets them: the real ``plugbus`` command in a subprocess.

Every bad config must stop ``plugbus`` with exit status 2 and one message on stderr of the form
``plugbus: FILE:LINE: dotted.key: what was expected (got ...)``. The configs are written as
literal YAML text so that the line numbers asserted below can be read off the test itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import ROOT, Server, free_port

BUILTINS_LISTED = "(built-ins are: auth, welcome, rooms, relay, moderation, webhooks)"
INVALID_INT = "Input should be a valid integer, unable to parse string as an integer"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any stray PLUGBUS_* override, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PLUGBUS_")}
    env.update(extra or {})
    return env


def plugbus(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m plugbus ARGS`` to completion (killed after ``timeout`` seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "plugbus", *args],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=cwd,
        timeout=timeout,
    )


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def check_fails(path: Path, env: dict[str, str] | None = None) -> str:
    """``plugbus config check PATH`` must exit 2 without a traceback; return its stderr."""
    result = plugbus("config", "check", str(path), env=env)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("plugbus: "), result.stderr
    return result.stderr


def plugins_json(*args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = plugbus("plugins", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


# 1. unknown keys ---------------------------------------------------------------------------


def test_unknown_top_level_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          port: 3000
        servers:
          port: 4000
    """,
    )
    err = check_fails(cfg)
    assert err == f"plugbus: invalid configuration: {cfg}:3: servers: unknown key\n"


def test_unknown_nested_key_is_named_by_dotted_path(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
          prot: 3000
    """,
    )
    err = check_fails(cfg)
    assert f"{cfg}:3: server.prot: unknown key" in err


def test_several_unknown_keys_are_all_reported_one_per_line(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          prot: 3000
          cors:
            origin: "*"
        bogus: 1
    """,
    )
    err = check_fails(cfg)
    lines = err.splitlines()
    assert lines[0] == f"plugbus: invalid configuration in {cfg}:"
    assert sorted(lines[1:]) == sorted(
        [
            f"  {cfg}:2: server.prot: unknown key",
            f"  {cfg}:4: server.cors.origin: unknown key",
            f"  {cfg}:5: bogus: unknown key",
        ]
    )


# 2. wrong types ----------------------------------------------------------------------------


def test_wrong_type_says_valid_integer_and_shows_the_value(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
          port: abc
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: invalid configuration: {cfg}:3: server.port: {INVALID_INT} (got 'abc')\n"
    )


def test_out_of_range_port_names_the_limit(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          port: 70000
    """,
    )
    err = check_fails(cfg)
    assert f"{cfg}:2: server.port: Input should be less than or equal to 65535 (got 70000)" in err


def test_bad_list_item_names_its_index_and_line(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          transports:
            - polling
            - pigeon
    """,
    )
    err = check_fails(cfg)
    assert (
        f"{cfg}:4: server.transports[1]: Input should be 'polling' or 'websocket' (got 'pigeon')"
    ) in err


def test_non_mapping_document_is_refused(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        - server
        - plugins
    """,
    )
    err = check_fails(cfg)
    assert err == f"plugbus: {cfg}: expected a mapping of sections (server, plugins) at the top\n"


# 3. unknown built-in -----------------------------------------------------------------------


def test_unknown_builtin_names_its_index_and_lists_the_builtins(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          builtins:
            - rooms
            - welcom
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: {cfg}:5: plugins.builtins[1]: no built-in plugin named 'welcom' "
        f"{BUILTINS_LISTED}\n"
    )


def test_unknown_builtin_in_flow_list_points_at_the_list_line(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
        plugins:
          builtins: [welcome, relai]
    """,
    )
    err = check_fails(cfg)
    assert f"{cfg}:4: plugins.builtins[1]: no built-in plugin named 'relai'" in err
    assert BUILTINS_LISTED in err


# 4. settings for a plugin nobody has -------------------------------------------------------


def test_settings_for_unknown_plugin_name_are_refused(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          settings:
            nosuch:
              level: 3
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: {cfg}:4: plugins.settings.nosuch: settings for 'nosuch', but no "
        f"plugin has that name (known: auth, moderation, relay, rooms, webhooks, welcome)\n"
    )


# 5. bad values inside a plugin's settings --------------------------------------------------


def test_bad_plugin_setting_names_plugin_and_dotted_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          settings:
            moderation:
              blocked_words: [spam]
              max_length: -1
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: plugin 'moderation': invalid configuration: {cfg}:6: "
        f"plugins.settings.moderation.max_length: "
        f"Input should be greater than or equal to 0 (got -1)\n"
    )


def test_unknown_plugin_setting_is_an_unknown_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          settings:
            welcome:
              greting: Hello
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: plugin 'welcome': invalid configuration: {cfg}:5: "
        f"plugins.settings.welcome.greting: unknown key\n"
    )


def test_several_bad_plugin_settings_are_all_reported(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          settings:
            welcome:
              greting: Hello
              event: ""
    """,
    )
    err = check_fails(cfg)
    lines = err.splitlines()
    assert lines[0] == f"plugbus: plugin 'welcome': invalid configuration in {cfg}:"
    assert (
        f"  {cfg}:6: plugins.settings.welcome.event: String should have at least 1 character "
        f"(got '')" in lines
    )
    assert f"  {cfg}:5: plugins.settings.welcome.greting: unknown key" in lines


def test_plugin_settings_section_of_wrong_type_is_refused(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          settings:
            welcome: Hello
    """,
    )
    err = check_fails(cfg)
    assert (
        f"{cfg}:3: plugins.settings.welcome: Input should be a valid dictionary (got 'Hello')"
        in err
    )


# 6. plugins.modules that cannot be imported ------------------------------------------------


def test_unimportable_module_plugin_names_plugin_and_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          modules:
            extra: nosuch_pkg_for_plugbus_tests.plugin
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: {cfg}:4: plugins.modules.extra: cannot load plugin 'extra' from "
        f"'nosuch_pkg_for_plugbus_tests.plugin' (module): ModuleNotFoundError: "
        f"No module named 'nosuch_pkg_for_plugbus_tests'\n"
    )


def test_module_plugin_with_missing_attribute_names_plugin_and_key(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          modules:
            extra: "json:NoSuchPlugin"
    """,
    )
    err = check_fails(cfg)
    assert (
        f"{cfg}:4: plugins.modules.extra: cannot load plugin 'extra' from "
        f"'json:NoSuchPlugin' (module): AttributeError:" in err
    )
    assert "NoSuchPlugin" in err.split("AttributeError:", 1)[1]


# 7. unreadable or unparsable files ---------------------------------------------------------


def test_invalid_yaml_is_reported_with_file_and_line(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: ok
         port: 3000
    """,
    )
    err = check_fails(cfg)
    assert err.startswith(f"plugbus: {cfg}: not valid YAML: ")
    assert "line 3, column 2" in err


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    cfg = tmp_path / "nowhere.yaml"
    err = check_fails(cfg)
    assert err == f"plugbus: {cfg}: cannot read config file: No such file or directory\n"


def test_directory_as_config_cannot_be_read(tmp_path: Path) -> None:
    err = check_fails(tmp_path)
    assert err == f"plugbus: {tmp_path}: cannot read config file: Is a directory\n"


def test_config_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("server:\n  name: café\n".encode("latin-1"))
    err = check_fails(cfg)  # today: UnicodeDecodeError traceback, exit 1
    assert err.startswith(f"plugbus: {cfg}: ")
    assert "utf-8" in err.lower()


def test_top_level_key_that_is_not_a_string_is_a_clear_error(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
        1: one
    """,
    )
    err = check_fails(cfg)  # today: TypeError "keywords must be strings" traceback, exit 1
    assert f"{cfg}:3: " in err


# 8. environment overrides ------------------------------------------------------------------


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
          port: 3000
    """,
    )
    err = check_fails(cfg, env={"PLUGBUS_SERVER__PORT": "notaport"})
    # No line number: line 3 of the file holds a value the environment replaced.
    assert err == (
        f"plugbus: invalid configuration: {cfg}: server.port: {INVALID_INT} "
        f"(got 'notaport') [from environment variable PLUGBUS_SERVER__PORT]\n"
    )


def test_bad_environment_override_of_plugin_setting_names_the_variable(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          settings:
            moderation:
              max_length: 5
    """,
    )
    var = "PLUGBUS_PLUGINS__SETTINGS__MODERATION__MAX_LENGTH"
    err = check_fails(cfg, env={var: "x"})
    assert err == (
        f"plugbus: plugin 'moderation': invalid configuration: {cfg}: "
        f"plugins.settings.moderation.max_length: {INVALID_INT} (got 'x') "
        f"[from environment variable {var}]\n"
    )


def test_bad_environment_list_item_names_the_variable(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          transports: [polling]
    """,
    )
    err = check_fails(cfg, env={"PLUGBUS_SERVER__TRANSPORTS": '["polling", "pigeon"]'})
    assert "server.transports[1]: Input should be 'polling' or 'websocket' (got 'pigeon')" in err
    # The file says [polling]; without this the user hunts for 'pigeon' in the wrong place.
    assert "[from environment variable PLUGBUS_SERVER__TRANSPORTS]" in err


def test_unknown_builtin_from_environment_names_the_variable(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          builtins: [welcome, rooms]
    """,
    )
    err = check_fails(cfg, env={"PLUGBUS_PLUGINS__BUILTINS": '["welcom"]'})
    assert "plugins.builtins[0]: no built-in plugin named 'welcom'" in err
    assert BUILTINS_LISTED in err
    # The file's line 3 lists welcome and rooms; the bad name came from the environment.
    assert "[from environment variable PLUGBUS_PLUGINS__BUILTINS]" in err


def test_valid_environment_override_passes_config_check(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          name: test
          port: 3000
        plugins:
          entry_points: false
    """,
    )
    result = plugbus(
        "config",
        "check",
        str(cfg),
        env={"PLUGBUS_SERVER__PORT": "8123", "PLUGBUS_SERVER__NAME": "from-env"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"{cfg}: OK (5 plugins: auth, welcome, rooms, relay, moderation)"
    )
    assert result.stderr == ""


def test_environment_override_reaches_the_running_server(serve: Callable[..., Server]) -> None:
    server = serve(env={"PLUGBUS_SERVER__NAME": "from-env"})
    response = httpx.get(server.url + "/health", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["server"] == "from-env"
    # The override is merged into the file: the file's port (and plugins) still apply.
    assert body["plugins"] == ["auth", "welcome", "rooms", "relay", "moderation"]


# 9. the shipped config ---------------------------------------------------------------------


def test_config_check_passes_on_shipped_config_yaml() -> None:
    result = plugbus("config", "check", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{ROOT / 'config.yaml'}: OK (")
    assert "auth, welcome, rooms, relay, moderation" in result.stdout
    assert result.stderr == ""


def test_config_check_without_path_checks_the_embedded_default(tmp_path: Path) -> None:
    result = plugbus("config", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ": OK (" in result.stdout
    assert result.stdout.split(":")[0].endswith("config.yaml")
    assert result.stderr == ""


# 10. serve refuses a bad config the same way -----------------------------------------------


def _serve_fails_like_check(cfg: Path) -> str:
    check = plugbus("config", "check", str(cfg))
    served = plugbus("serve", "--config", str(cfg), timeout=20)
    assert served.returncode == 2, (served.returncode, served.stderr)
    assert check.returncode == 2
    assert served.stderr == check.stderr
    assert served.stdout == ""
    return served.stderr


def test_serve_with_bad_config_exits_2_with_the_check_message(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        f"""
        server:
          port: {free_port()}
          log_level: loud
    """,
    )
    err = _serve_fails_like_check(cfg)
    assert (
        f"{cfg}:3: server.log_level: Input should be 'critical', 'error', 'warning', "
        f"'info' or 'debug' (got 'loud')" in err
    )


def test_serve_with_bad_plugin_settings_exits_2_with_the_check_message(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        f"""
        server:
          port: {free_port()}
        plugins:
          entry_points: false
          settings:
            moderation:
              max_length: -1
    """,
    )
    err = _serve_fails_like_check(cfg)
    assert (
        f"plugin 'moderation': invalid configuration: {cfg}:7: "
        f"plugins.settings.moderation.max_length:" in err
    )


def test_serve_port_option_out_of_range_is_refused(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        server:
          log_level: warning
        plugins:
          entry_points: false
    """,
    )
    try:
        result = plugbus("serve", "--config", str(cfg), "--port", "70000", timeout=10)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise AssertionError(
            "plugbus serve --port 70000 started serving (on port 70000 - 65536 "
            "= 4464) instead of refusing the port"
        ) from None
    assert result.returncode == 2, result.stderr
    assert "server.port" in result.stderr
    assert "65535" in result.stderr


# 11. plugins --json ------------------------------------------------------------------------


def test_plugins_json_lists_the_builtins_with_source_and_hooks() -> None:
    plugins = {p["name"]: p for p in plugins_json()}
    expected_hooks = {
        "auth": [
            "plugbus_authenticate",
            "plugbus_authenticate_request",
            "plugbus_authorize_join",
            "plugbus_startup",
        ],
        "welcome": [
            "plugbus_connected",
            "plugbus_register_events",
            "plugbus_room_joined",
            "plugbus_routes",
        ],
        "rooms": [
            "plugbus_disconnect",
            "plugbus_handle_event",
            "plugbus_register_events",
            "plugbus_room_joined",
            "plugbus_room_left",
            "plugbus_routes",
            "plugbus_session_expired",
            "plugbus_startup",  # registers its cluster operations
        ],
        "relay": ["plugbus_handle_event", "plugbus_register_events", "plugbus_routes"],
        "moderation": [
            "plugbus_connect",
            "plugbus_disconnect",
            "plugbus_moderate",
            "plugbus_routes",
            "plugbus_startup",
        ],
    }
    for name, hooks in expected_hooks.items():
        assert plugins[name]["source"] == "builtin"
        assert plugins[name]["hooks"] == hooks
        assert plugins[name]["target"].startswith(f"plugbus.plugins.{name}:")
    assert [n for n in plugins if n in expected_hooks] == list(expected_hooks)


def test_plugins_json_on_shipped_config_matches_the_default() -> None:
    assert plugins_json("--config", str(ROOT / "config.yaml")) == plugins_json()


# 12. switched-off built-ins are still checked ----------------------------------------------


def test_settings_of_switched_off_builtin_are_still_checked(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          builtins: [welcome, rooms, relay]
          settings:
            moderation:
              max_length: "x"
    """,
    )
    err = check_fails(cfg)
    assert err == (
        f"plugbus: plugin 'moderation': invalid configuration: {cfg}:6: "
        f"plugins.settings.moderation.max_length: {INVALID_INT} (got 'x')\n"
    )


def test_settings_of_disabled_builtin_are_still_checked(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          disabled: [welcome]
          settings:
            welcome:
              greting: Hi
    """,
    )
    err = check_fails(cfg)
    assert (
        f"plugin 'welcome': invalid configuration: {cfg}:6: "
        f"plugins.settings.welcome.greting: unknown key" in err
    )


# 13. plugins.disabled ----------------------------------------------------------------------


def test_disabled_builtin_is_not_listed(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
        plugins:
          entry_points: false
          builtins: [welcome, rooms, relay, moderation]
          disabled: [welcome]
    """,
    )
    names = [p["name"] for p in plugins_json("--config", str(cfg))]
    assert names == ["rooms", "relay", "moderation"]
    result = plugbus("config", "check", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "OK (3 plugins: rooms, relay, moderation)" in result.stdout


# 11. config check loads the plugins and runs their start-up --------------------------------


def test_config_check_runs_plugin_start_up_and_reports_what_it_refuses(tmp_path: Path) -> None:
    # A rule name no rule has is only known once every plugin's rules are collected, at
    # start-up: config check used to say OK and serve then failed.
    cfg = write(
        tmp_path,
        """
        plugins:
          settings:
            moderation:
              rules: {no_such_rule: {enabled: true}}
    """,
    )
    result = plugbus("config", "check", str(cfg))
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("plugbus: plugin 'moderation': ")
    assert "no moderation rule named 'no_such_rule'" in result.stderr
    assert result.stdout == ""


def test_config_check_reports_a_plugin_whose_start_up_fails(tmp_path: Path) -> None:
    plugin = tmp_path / "broken_start.py"
    plugin.write_text(
        "from plugbus import hookimpl\n\n\n"
        "@hookimpl\n"
        "def plugbus_startup(bus):\n"
        "    raise RuntimeError('the database is not configured')\n",
        encoding="utf-8",
    )
    cfg = write(
        tmp_path,
        """
        plugins:
          modules: {broken: broken_start}
    """,
    )
    result = plugbus("config", "check", str(cfg), env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr == (
        "plugbus: start-up failed: RuntimeError: the database is not configured\n"
    )
