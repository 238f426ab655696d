"""trust: links followed only if root made them, private directories, trusted files."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from backupagent import trust


@pytest.fixture
def nobody() -> int:
    if os.geteuid() != 0:
        pytest.skip("making files of another user needs root")
    return pwd.getpwnam("nobody").pw_uid


def _theirs(path: Path, uid: int) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)


# (set-up under tmp, the path asked for, None or the refusal's words)
OPEN_CASES: dict[str, tuple[Callable[[Path, int], None], str, str | None]] = {
    "a plain directory": (lambda t, u: (t / "a").mkdir(), "a", None),
    "through root's link": (
        lambda t, u: ((t / "a").mkdir(), (t / "l").symlink_to("a")),
        "l",
        None,
    ),
    "through another user's link": (
        lambda t, u: ((t / "a").mkdir(), (t / "l").symlink_to(t / "a"), _theirs(t / "l", u)),
        "l",
        "belongs to uid",
    ),
    "another user's link on the way": (
        lambda t, u: (
            (t / "a" / "b").mkdir(parents=True),
            (t / "l").symlink_to("a"),
            _theirs(t / "l", u),
        ),
        "l/b",
        "the symbolic link 'l' on the way",
    ),
    "a loop of links": (
        lambda t, u: ((t / "x").symlink_to("y"), (t / "y").symlink_to("x")),
        "x",
        "Too many levels",
    ),
}


@pytest.mark.parametrize("case", list(OPEN_CASES))
def test_open_directory(tmp_path: Path, nobody: int, case: str) -> None:
    set_up, asked, refusal = OPEN_CASES[case]
    set_up(tmp_path, nobody)
    if refusal is None:
        fd = trust.open_directory(tmp_path / asked)
        try:
            assert trust.real_path(fd) == (tmp_path / asked).resolve()
        finally:
            os.close(fd)
        return
    with pytest.raises((trust.Untrusted, OSError), match=refusal):
        trust.open_directory(tmp_path / asked)


PRIVATE_CASES: dict[str, tuple[Callable[[Path, int], None], str | None]] = {
    "new": (lambda t, u: None, None),
    "existing 0755 (an older version's)": (lambda t, u: (t / "p").mkdir(0o755), None),
    "below a sticky directory anyone may write": (lambda t, u: t.chmod(0o1777), None),
    "others may write it": (lambda t, u: ((t / "p").mkdir(), (t / "p").chmod(0o777)), "mode 777"),
    "another user's": (lambda t, u: ((t / "p").mkdir(), _theirs(t / "p", u)), "belongs to uid"),
    "below a directory anyone may write, not sticky": (lambda t, u: t.chmod(0o777), "mode 777"),
    "below another user's directory": (lambda t, u: _theirs(t, u), "belongs to uid"),
}


@pytest.mark.parametrize("case", list(PRIVATE_CASES))
def test_private_directory(tmp_path: Path, nobody: int, case: str) -> None:
    base = tmp_path / "base"
    base.mkdir()
    set_up, refusal = PRIVATE_CASES[case]
    set_up(base, nobody)
    existed = (base / "p").exists()
    if refusal is None:
        assert trust.private_directory(base / "p" / "job") == base / "p" / "job"
        assert (base / "p" / "job").stat().st_mode & 0o777 == 0o700
        return
    with pytest.raises(trust.Untrusted, match=refusal):
        trust.private_directory(base / "p" / "job")
    assert (base / "p").exists() == existed  # nothing made below an untrusted directory
    assert not (base / "p" / "job").exists()


FILE_CASES: dict[str, tuple[Callable[[Path, int], None], str | None]] = {
    "root's, 0600": (lambda f, u: f.chmod(0o600), None),
    "root's, 0644": (lambda f, u: f.chmod(0o644), None),
    "group-writable": (lambda f, u: f.chmod(0o664), "may be written by others (mode 664)"),
    "another user's": (lambda f, u: _theirs(f, u), "belongs to uid"),
    "root's link to a good file": (
        lambda f, u: (f.rename(f.with_name("real")), f.symlink_to("real")),
        None,
    ),
    "another user's link": (
        lambda f, u: (f.rename(f.with_name("real")), f.symlink_to("real"), _theirs(f, u)),
        "symbolic link of uid",
    ),
    "root's link to another user's file": (
        lambda f, u: (
            f.rename(f.with_name("real")),
            f.symlink_to("real"),
            _theirs(f.with_name("real"), u),
        ),
        "belongs to uid",
    ),
    "in a directory anyone may write": (lambda f, u: f.parent.chmod(0o777), "mode 777"),
    "missing": (lambda f, u: f.unlink(), "cannot read"),
    "a directory": (lambda f, u: (f.unlink(), f.mkdir()), "not a regular file"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_file_problem(tmp_path: Path, nobody: int, case: str) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    path = directory / "jobs.toml"
    path.write_text("")
    set_up, refusal = FILE_CASES[case]
    set_up(path, nobody)
    problem = trust.file_problem(path)
    if refusal is None:
        assert problem is None
    else:
        assert problem is not None and refusal in problem
