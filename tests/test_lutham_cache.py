"""The LUTHAM kernel cache is private: another local user cannot plant the library that
`load_library()` loads or the runner `build_runner()` returns.

Directories the cache uses must be real directories owned by us and not writable by group or
others (new ones are created 0700); no directory above may be world-writable without the
sticky bit; the cached library and runner must be regular files with the same owner and mode
rules; lock, key and temp files are never opened through a symlink. Most tests call the
helpers directly, without a compiler; the ones through `build_library` / `build_runner` need
executorch and a C++ compiler and skip otherwise. Tests run as root in CI, where os.access is
always true, so "not writable" is simulated with a regular file where a directory should be.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sharekan import lutham
from sharekan.errors import LuthamBuildError

UID = os.getuid()


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no cache variables, HOME and the temp directory under tmp_path
    (the temp directory is 1777 like /tmp)."""
    for var in ("SHAREKAN_CACHE_DIR", "XDG_CACHE_HOME", "SHAREKAN_LUTHAM_SANITIZE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path


def _fallback(env) -> Path:
    return env / "tmp" / f"sharekan-lutham-{UID}"


# -- directories ------------------------------------------------------------------------


def test_new_cache_directories_are_created_0700(env):
    root = lutham._cache_root(lutham.cache_dir())
    assert root == env / "home" / ".cache" / "sharekan" / "lutham"
    for created in (env / "home" / ".cache", root.parent, root):
        assert _mode(created) == 0o700, created
    keyed = lutham._make_private_dir(root / "0123abcd")
    assert _mode(keyed) == 0o700
    assert not _fallback(env).exists()


@pytest.mark.parametrize("var", ["SHAREKAN_CACHE_DIR", "XDG_CACHE_HOME"])
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_group_or_world_writable_cache_dir_is_refused(env, monkeypatch, var, mode):
    base = env / "base"
    monkeypatch.setenv(var, str(base))
    root = lutham.cache_dir()
    root.mkdir(parents=True)
    os.chmod(root, mode)
    want = f"{re.escape(str(root))}.*writable by group or others \\(mode 0{mode:o}\\)"
    with pytest.raises(LuthamBuildError, match=want + ".*SHAREKAN_CACHE_DIR"):
        lutham._cache_root(root)
    assert not _fallback(env).exists()  # refused, not silently replaced by the fallback


def test_group_writable_keyed_subdirectory_is_refused(env, monkeypatch):
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    root = lutham._cache_root(lutham.cache_dir())
    keyed = root / "somekey"
    keyed.mkdir()
    os.chmod(keyed, 0o770)
    with pytest.raises(LuthamBuildError, match="somekey is writable by group or others"):
        lutham._make_private_dir(keyed)


def test_symlinked_cache_dir_is_refused(env, monkeypatch):
    elsewhere = env / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    root = lutham.cache_dir()
    root.parent.mkdir()
    root.symlink_to(elsewhere)
    with pytest.raises(LuthamBuildError, match=f"{re.escape(str(root))} is a symlink"):
        lutham._cache_root(root)
    # a dangling link is refused too, not created through
    root.unlink()
    root.symlink_to(env / "not-yet")
    with pytest.raises(LuthamBuildError, match="is a symlink"):
        lutham._cache_root(root)
    assert not (env / "not-yet").exists()
    # and a symlinked keyed subdirectory
    root.unlink()
    root.mkdir(mode=0o700)
    (root / "key").symlink_to(elsewhere)
    with pytest.raises(LuthamBuildError, match="key is a symlink"):
        lutham._make_private_dir(root / "key")


@pytest.mark.skipif(UID != 0, reason="chown to another uid needs root")
def test_cache_dir_owned_by_another_user_is_refused(env, monkeypatch):
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    root = lutham.cache_dir()
    root.mkdir(parents=True, mode=0o700)
    os.chown(root, 12345, 12345)
    with pytest.raises(LuthamBuildError,
                       match=f"{re.escape(str(root))} is owned by uid 12345.*uid {UID}"):
        lutham._cache_root(root)


@pytest.mark.skipif(UID != 0, reason="chown to another uid needs root")
def test_fallback_dir_created_first_by_another_user_is_refused(env):
    # the reported attack: another user creates /tmp/sharekan-lutham-<uid> before us
    (env / "home" / ".cache").write_text("")  # the home cache cannot be created
    planted = _fallback(env)
    planted.mkdir(mode=0o755)
    os.chown(planted, 12345, 12345)
    with pytest.raises(LuthamBuildError, match="sharekan-lutham-.* is owned by uid 12345"):
        lutham._cache_root(lutham.cache_dir())


@pytest.mark.parametrize("via", ["HOME", "XDG_CACHE_HOME", "SHAREKAN_CACHE_DIR"])
def test_fallback_when_home_cache_cannot_be_created(env, monkeypatch, via):
    blocker = env / "blocker"
    blocker.write_text("a regular file where a directory should be")
    if via == "HOME":
        (env / "home" / ".cache").write_text("")
    else:
        monkeypatch.setenv(via, str(blocker))
    root = lutham._cache_root(lutham.cache_dir())
    assert root == _fallback(env)
    assert stat.S_ISDIR(os.lstat(root).st_mode)
    assert _mode(root) == 0o700
    assert os.lstat(root).st_uid == UID
    # the second call reuses it
    assert lutham._cache_root(lutham.cache_dir()) == root


def test_fallback_that_exists_must_pass_the_checks(env):
    (env / "home" / ".cache").write_text("")
    fallback = _fallback(env)
    fallback.mkdir(mode=0o777)
    os.chmod(fallback, 0o777)
    with pytest.raises(LuthamBuildError, match="writable by group or others"):
        lutham._cache_root(lutham.cache_dir())
    os.rmdir(fallback)
    elsewhere = env / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fallback.symlink_to(elsewhere)
    with pytest.raises(LuthamBuildError, match="is a symlink"):
        lutham._cache_root(lutham.cache_dir())


def test_world_writable_parent_needs_the_sticky_bit(env, monkeypatch):
    shared = env / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(shared / "mine"))
    want = f"{re.escape(str(shared))}, above .*world-writable without the sticky bit"
    with pytest.raises(LuthamBuildError, match=want):
        lutham._cache_root(lutham.cache_dir())
    os.chmod(shared, 0o1777)  # like /tmp: others cannot rename our entries
    root = lutham._cache_root(lutham.cache_dir())
    assert root == shared / "mine" / "lutham" and _mode(root) == 0o700
    # the same rule for the temp directory the fallback goes into
    (env / "home" / ".cache").write_text("")
    monkeypatch.delenv("SHAREKAN_CACHE_DIR")
    os.chmod(env / "tmp", 0o777)
    with pytest.raises(LuthamBuildError, match="world-writable without the sticky bit"):
        lutham._cache_root(lutham.cache_dir())
    assert not _fallback(env).exists()


# -- lock, key and temp files ------------------------------------------------------------


def test_lock_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim_mode = _mode(victim)
    lock = tmp_path / "d" / ".lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    with pytest.raises(LuthamBuildError, match=r"\.lock \(it is a symlink; remove it\)"):
        with lutham._file_lock(lock):
            pass
    assert victim.read_text() == "precious"
    assert _mode(victim) == victim_mode
    # a dangling link: its target must not be created
    lock.unlink()
    lock.symlink_to(tmp_path / "created")
    with pytest.raises(LuthamBuildError, match="symlink"):
        with lutham._file_lock(lock):
            pass
    assert not os.path.lexists(tmp_path / "created")


def test_lock_is_a_0600_regular_file(tmp_path):
    lock = tmp_path / ".lock"
    with lutham._file_lock(lock):
        assert stat.S_ISREG(os.lstat(lock).st_mode)
    assert _mode(lock) == 0o600
    os.unlink(lock)
    os.mkfifo(lock)  # would hang a plain open()
    with pytest.raises(LuthamBuildError, match="not a regular file"):
        with lutham._file_lock(lock):
            pass


def test_key_file_symlink_is_neither_read_nor_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("thekey")
    key_file = tmp_path / "lutham_runner.key"
    key_file.symlink_to(victim)
    assert lutham._read_key(key_file) is None  # a linked key never matches: rebuild
    lutham._write_key(key_file, "newkey")
    assert victim.read_text() == "thekey"
    assert not key_file.is_symlink() and key_file.read_text() == "newkey"
    assert lutham._read_key(key_file) == "newkey"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- the files that are loaded or run ----------------------------------------------------


def test_planted_library_is_refused(tmp_path):
    real = tmp_path / "real.so"
    real.write_bytes(b"\x7fELF not really")
    os.chmod(real, 0o755)
    lutham._check_private_file(real, "cached LUTHAM kernel library")  # ours, 0755: fine
    link = tmp_path / lutham.LIBRARY_NAME
    link.symlink_to(real)
    with pytest.raises(LuthamBuildError, match=f"library {re.escape(str(link))} is a symlink"):
        lutham._check_private_file(link, "cached LUTHAM kernel library")
    for mode in (0o775, 0o757):
        os.chmod(real, mode)
        with pytest.raises(LuthamBuildError, match=f"writable by group or others "
                           f"\\(mode 0{mode:o}\\)"):
            lutham._check_private_file(real, "cached LUTHAM kernel library")
    with pytest.raises(LuthamBuildError, match="not a regular file"):
        lutham._check_private_file(tmp_path, "cached LUTHAM kernel library")


@pytest.mark.skipif(UID != 0, reason="chown to another uid needs root")
def test_library_owned_by_another_user_is_refused(tmp_path):
    lib = tmp_path / lutham.LIBRARY_NAME
    lib.write_bytes(b"x")
    os.chown(lib, 12345, 12345)
    with pytest.raises(LuthamBuildError, match="owned by uid 12345"):
        lutham._check_private_file(lib, "cached LUTHAM kernel library")


@pytest.fixture
def build_prereqs():
    """Skips without executorch / a C++ compiler (build_library needs them even to compute
    the cache key, before it looks at the cache)."""
    try:
        lutham.executorch_info()
        lutham._compiler()
    except LuthamBuildError as exc:
        pytest.skip(f"LUTHAM build prerequisites unavailable: {exc}")


@pytest.fixture
def fixed_key_cache(build_prereqs, env, monkeypatch):
    """A cache whose build key is 'fixedkey', so a planted file is found without compiling."""
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    monkeypatch.setattr(lutham, "_build_key", lambda parts: "fixedkey")
    keyed = lutham._make_private_dir(lutham._cache_root(lutham.cache_dir()) / "fixedkey")
    return keyed


def test_build_and_load_refuse_a_planted_cached_library(fixed_key_cache, monkeypatch, env):
    junk = env / "junk.so"
    junk.write_bytes(b"not a library")
    lib = fixed_key_cache / lutham.LIBRARY_NAME
    lib.symlink_to(junk)
    with pytest.raises(LuthamBuildError, match=f"{re.escape(str(lib))} is a symlink"):
        lutham.build_library()
    monkeypatch.setattr(lutham, "_loaded", None)
    with pytest.raises(LuthamBuildError, match=f"{re.escape(str(lib))} is a symlink"):
        lutham.load_library()
    assert lutham._loaded is None
    lib.unlink()
    lib.write_bytes(b"not a library")
    os.chmod(lib, 0o664)
    with pytest.raises(LuthamBuildError, match="writable by group or others"):
        lutham.load_library()
    assert lutham._loaded is None


def test_build_runner_refuses_a_planted_runner(fixed_key_cache, env):
    lib = fixed_key_cache / lutham.LIBRARY_NAME
    lib.write_bytes(b"stands in for a cached build")
    os.chmod(lib, 0o755)
    (fixed_key_cache / (lutham.RUNNER_NAME + ".key")).write_text("fixedkey")
    evil = env / "evil"
    evil.write_text("#!/bin/sh\necho pwned\n")
    runner = fixed_key_cache / lutham.RUNNER_NAME
    runner.symlink_to(evil)
    with pytest.raises(LuthamBuildError, match=f"runner {re.escape(str(runner))} is a symlink"):
        lutham.build_runner(sanitize=False)


def test_explicit_out_dir_lock_symlink_is_refused(build_prereqs, env):
    out = env / "out"
    out.mkdir()
    victim = env / "victim"
    victim.write_text("precious")
    (out / ".lock").symlink_to(victim)
    with pytest.raises(LuthamBuildError, match="symlink"):
        lutham.build_library(out)
    assert victim.read_text() == "precious"


def test_build_outputs_come_from_private_temp_files(build_prereqs, env, monkeypatch):
    """With a stand-in compiler that, like some linkers, replaces its output file with one of
    the umask's mode (0775 here): the temp name given to it was created beforehand (mkstemp:
    0600, O_EXCL) in the keyed directory, and the installed files end up not group-writable,
    so the cached files pass the checks on the next call."""
    log = env / "cxx.log"
    cxx = env / "fake-cxx"
    cxx.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "fake-c++ 1.0"; exit 0; fi
out=""
while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then out="$2"; fi; shift; done
echo "$out $(stat -c '%a %F' "$out")" >> {log}
rm -f "$out"
printf built > "$out"
chmod 775 "$out"
""")
    os.chmod(cxx, 0o700)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    runner = lutham.build_runner(sanitize=False)
    keyed = runner.parent
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len(calls) == 2, calls  # the library, then the runner
    for out, before in calls:
        assert Path(out).parent == keyed
        assert Path(out).name.startswith((".libsharekan_lutham.", f".{lutham.RUNNER_NAME}."))
        assert before == "600 regular empty file"
        assert not os.path.lexists(out)  # renamed into place
    assert Path(calls[1][0]).name != f".{lutham.RUNNER_NAME}.{os.getpid()}.tmp"
    for built in (keyed / lutham.LIBRARY_NAME, runner):
        assert _mode(built) == 0o755
    assert lutham.build_runner(sanitize=False) == runner  # cached, passes the checks
    assert len(log.read_text().splitlines()) == 2


def test_real_build_is_private_and_loads(build_prereqs, env, monkeypatch):
    """Compiles the kernel into a fresh cache, then loads it in a child process (this one
    may already hold another build, and a second registration would abort)."""
    monkeypatch.setenv("SHAREKAN_CACHE_DIR", str(env / "c"))
    old = os.umask(0o002)  # a umask that would leave the linker output group-writable
    try:
        lib = lutham.build_library()
    finally:
        os.umask(old)
    root = lutham.cache_dir()
    assert lib.parent.parent == root
    assert _mode(root) == 0o700 and _mode(lib.parent) == 0o700
    st = os.lstat(lib)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == UID and not st.st_mode & 0o022
    assert _mode(lib.parent / ".lock") == 0o600
    # no temp file left behind
    assert sorted(p.name for p in lib.parent.iterdir()) == [".lock", lutham.LIBRARY_NAME]
    child = subprocess.run(
        [sys.executable, "-c", "from sharekan import lutham; print(lutham.load_library())"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str(lib.resolve())
