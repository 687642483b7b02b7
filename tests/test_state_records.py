"""State records and labels that say something other than what hybridorch writes (edited by hand, another version):
`ps`, `ps -o json`, `gc` and the live audit read each bad field as unknown, never crash, and gc never removes what it
cannot tell is expired."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hybridorch.backends.base import Managed, record_count, record_time, record_ttl
from hybridorch.backends.qemu import QemuBackend
from hybridorch.cli import cli
from hybridorch.core.policy import PROFILES
from hybridorch.ops import lifecycle
from hybridorch.ops.audit import Context, check_local_vm

NOW = 1_800_000_000.0
DAY = 86400


def managed(created: Any = NOW - 2 * DAY, ttl: Any = "1d", owner: Any = "me") -> Managed:
    return Managed("local", "vm", "w-0", "", "s", "w", None, owner, ttl, created)


@pytest.mark.parametrize("value", ["x", "1700000000", None, True, [1], {"a": 1}, float("nan"), float("inf"), 1e400,
                                   -1e300, -1, 2.0**40, 10**400])
def test_an_implausible_start_time_is_unknown(value: Any) -> None:
    assert record_time(value) is None


@pytest.mark.parametrize("value", [5, 5.0, True, "9" * 5000 + "d", "1x", "", None, ["1d"], "1d" * 40])
def test_an_unreadable_ttl_is_unknown(value: Any) -> None:
    assert record_ttl(value) is None


def test_readable_fields_are_read() -> None:
    assert record_time(1_700_000_000) == 1_700_000_000.0 and record_ttl("1d12h") == 1.5 * DAY
    assert record_count(3) == 3 and record_count(True) is None and record_count(-1) is None
    assert record_count(70000, 65535) is None


@pytest.mark.parametrize("fields,unreadable", [  # all of them past a 1d ttl were they readable
    ({"created": "x"}, ("started",)),
    ({"created": -1e300}, ("started",)),
    ({"ttl": "9" * 5000 + "d"}, ("ttl",)),
    ({"ttl": 5}, ("ttl",)),
    ({"owner": ["a"]}, ("owner",)),
    ({"created": 1e400, "ttl": 5}, ("started", "ttl")),
])
def test_a_bad_field_is_unknown_shown_as_a_question_mark_and_never_expires(fields: dict[str, Any],
                                                                           unreadable: tuple[str, ...]) -> None:
    m = managed(**fields)
    assert m.unreadable == unreadable and m.expired(NOW) is (unreadable == ("owner",))
    row = lifecycle.ps_table([m], NOW).splitlines()[1]
    assert "?" in row
    data = m.to_dict(NOW)
    assert json.loads(json.dumps(data, allow_nan=False))["unreadable"] == list(unreadable)


def test_good_fields_still_expire() -> None:
    assert managed().expired(NOW) and managed().unreadable == ()
    assert not managed(ttl="3d").expired(NOW) and not managed(ttl=None).expired(NOW)
    assert lifecycle.ps_table([managed(ttl=None, owner=None)], NOW).splitlines()[1].split()[-2:] == ["-", "-"]


# --- through the CLI: a state dir holding one bad record of a VM whose process is alive --------------------------

def state_dir(tmp_path: Path, **fields: Any) -> Path:
    record = {"stack": "s", "workload": "w", "replica": 0, "runtime": "vm", "owner": "o", "domain": "d",
              "started": 1_700_000_000, "ttl": "1d", **fields}
    workdir = tmp_path / "st" / "s" / "w-0"
    workdir.mkdir(parents=True)
    (workdir / "state.json").write_text(json.dumps(record))
    (workdir / "qemu.pid").write_text(f"{os.getpid()}\n")   # alive: the record is listed
    return tmp_path / "st"


BAD = {"started-str": {"started": "x"}, "ttl-5000-digits": {"ttl": "9" * 5000 + "d"}, "ttl-int": {"ttl": 5},
       "started-inf": {"started": 1e400}, "started-neg-huge": {"started": -1e300}, "owner-list": {"owner": [1]},
       "stack-list": {"stack": ["a"], "workload": {"a": 1}}}


@pytest.mark.parametrize("name", list(BAD))
def test_ps_and_gc_read_a_bad_record_without_crashing(name: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(state_dir(tmp_path, **BAD[name])))
    monkeypatch.setenv("PATH", str(tmp_path))   # no virsh: only the record names the VM
    runner = CliRunner()
    table = runner.invoke(cli, ["ps"], catch_exceptions=False)
    assert table.exit_code == 0 and "w-0" in table.stdout, table.output
    as_json = runner.invoke(cli, ["ps", "-o", "json"], catch_exceptions=False)
    assert as_json.exit_code == 0 and len(json.loads(as_json.stdout)) == 1
    gc = runner.invoke(cli, ["gc", "--dry-run"], catch_exceptions=False)
    unknown_age = {"started", "ttl"} & set(BAD[name])   # the rest is past its 1d ttl, and readable enough to say so
    assert gc.exit_code == 0 and ("would remove" in gc.stdout) is not bool(unknown_age), gc.output
    if name not in ("stack-list",):   # a stack that is a list is shown as text: nothing unknown
        assert "?" in table.stdout
        warnings = [ln for ln in table.stderr.splitlines() if "not readable as recorded" in ln]
        assert len(warnings) == 1 and warnings[0].startswith("warning: "), table.stderr


def test_gc_removes_nothing_whose_ttl_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDORCH_STATE_DIR", str(state_dir(tmp_path, ttl="9" * 5000 + "d")))
    monkeypatch.setenv("PATH", str(tmp_path))
    expired, removed = lifecycle.gc("local")
    assert expired == [] and removed == []
    assert (tmp_path / "st" / "s" / "w-0" / "state.json").is_file()


@pytest.mark.parametrize("fields", [{"forwards": "x"}, {"forwards": [[1, 2]]}, {"forwards": [["a", "b", 3]]},
                                    {"forwards": [5]}, {"domain": 3}, {"domain": None}])
def test_the_qemu_backend_reads_a_bad_record_as_no_vm(fields: dict[str, Any], tmp_path: Path) -> None:
    root = state_dir(tmp_path, **{"forwards": [["127.0.0.1", 8080, 80]], **fields})
    assert QemuBackend._load(root / "s" / "w-0") == (None, {})


def test_the_qemu_backend_reads_a_good_record(tmp_path: Path) -> None:
    root = state_dir(tmp_path, forwards=[["127.0.0.1", 8080, 80]])
    vm, state = QemuBackend._load(root / "s" / "w-0")
    assert vm is not None and vm.name == "d" and state["ttl"] == "1d"


@pytest.mark.parametrize("state", [
    {"replica": "x", "cpus": "many", "forwards": "x", "started": "x"},
    {"replica": [1], "cpus": 1e400, "forwards": [[1, 2, 3], ["0.0.0.0", "x", 22], 7], "started": 1e400},
    {"cpus": 10**400, "forwards": [["0.0.0.0", 2222, 22]], "started": -1e300},
])
def test_the_live_audit_reads_a_bad_record_without_crashing(state: dict[str, Any]) -> None:
    ctx = Context(PROFILES["balanced"], NOW)
    found = check_local_vm({"stack": "s", "workload": "w", **state}, None, ctx, ("s.yaml", 1))
    assert {f.rule for f in found} <= {"HYB009"}
