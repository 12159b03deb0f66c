"""The operator starts under a uid with no passwd entry (the images' bare USER 65532).

kopf names itself from getpass.getuser(), also with --standalone; for such a uid that
raised KeyError ('getpwuid(): uid not found: 65532') and the operator died at startup.
These run kopf's own identity code, not a copy of it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kopf._core.engines.peering import detect_own_id
from modelservice_operator.cli import ensure_login_name

from tests.needs import needed

NAME_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
NO_SUCH_UID = 65532


def _no_passwd_entry(uid: int) -> pwd.struct_passwd:
    raise KeyError(f"getpwuid(): uid not found: {uid}")


@pytest.fixture
def nameless(monkeypatch: pytest.MonkeyPatch) -> None:
    """No login name in the environment and no passwd entry for this process's uid."""
    for var in (*NAME_VARIABLES, "POD_ID"):
        monkeypatch.setenv(var, "x")  # recorded, so that teardown restores what was there
        monkeypatch.delenv(var)
    monkeypatch.setattr(pwd, "getpwuid", _no_passwd_entry)


@pytest.mark.usefixtures("nameless")
def test_kopf_gets_an_identity_without_a_passwd_entry() -> None:
    with pytest.raises(KeyError, match="uid not found"):
        detect_own_id(manual=False)  # the crash, reproduced
    ensure_login_name()
    identity = detect_own_id(manual=False)
    assert identity.startswith(f"uid{os.getuid()}@"), identity


@pytest.mark.usefixtures("nameless")
def test_pod_id_and_real_names_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "modelservice-operator-abc")
    ensure_login_name()
    assert "USER" not in os.environ
    assert detect_own_id(manual=False) == "modelservice-operator-abc"
    monkeypatch.delenv("POD_ID")
    monkeypatch.setenv("LOGNAME", "alice")
    ensure_login_name()
    assert "USER" not in os.environ


def _uid_has_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _runnable_by_anyone(path: str) -> bool:
    """Every directory above `path` searchable and the file executable by any uid."""
    real = Path(path).resolve()
    return all(d.stat().st_mode & 0o001 for d in real.parents) and bool(real.stat().st_mode & 0o001)


def _interpreter_for_another_uid() -> tuple[str, list[str]]:
    """This interpreter, or (when it lives where other uids cannot reach it, as pyenv's
    under /root) the system's of the same version, given this one's site-packages."""
    if _runnable_by_anyone(sys.executable):
        return sys.executable, []
    same = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not (Path(same).is_file() and _runnable_by_anyone(same)):
        needed(f"an interpreter another uid can run: {sys.executable} is not, nor is {same}")
    return same, [p for p in sys.path if p.endswith("site-packages")]


def test_a_process_of_a_uid_missing_from_passwd_gets_an_identity() -> None:
    if os.geteuid() != 0:
        needed("root, to run a process as another uid")
    if _uid_has_entry(NO_SUCH_UID):
        needed(f"a uid missing from /etc/passwd, but {NO_SUCH_UID} is in it")
    # The real thing: another process, really running as a uid /etc/passwd lacks, with no
    # login name in its environment (as in the operator image).
    python, site_dirs = _interpreter_for_another_uid()
    code = f"import site\nfor d in {site_dirs!r}:\n    site.addsitedir(d)\n" + textwrap.dedent(
        """
        from kopf._core.engines.peering import detect_own_id
        from modelservice_operator.cli import ensure_login_name
        try:
            detect_own_id(manual=False)
        except KeyError as e:
            print("before:", e)
        ensure_login_name()
        print("identity:", detect_own_id(manual=False))
        """
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    try:
        proc = subprocess.run(
            [python, "-c", code],
            user=NO_SUCH_UID,
            group=NO_SUCH_UID,
            extra_groups=[],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
    except PermissionError as e:
        needed(f"uid {NO_SUCH_UID} cannot run {python}: {e}")
    assert proc.returncode == 0, proc.stderr
    assert f"before: 'getpwuid(): uid not found: {NO_SUCH_UID}'" in proc.stdout, proc.stdout
    assert f"identity: uid{NO_SUCH_UID}@" in proc.stdout, proc.stdout
