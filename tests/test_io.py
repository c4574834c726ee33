"""daisy.io: atomic writes that survive a kill at any point, and the run-folder lock."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import random_early_exit
from daisy import io
from daisy.model import EarlyExitHubert
from daisy.upstream import HubertBackbone


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch, tmp_path):
    """Both ways a folder is swapped in: renameat2's exchange (Linux) and the portable two renames."""
    if request.param == "two renames":
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
        return request.param
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").touch()
    if not io._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2 exchange here (not Linux, or the filesystem lacks it)")
    assert (tmp_path / "b" / "x").exists()  # it swapped
    (tmp_path / "b" / "x").unlink()
    (tmp_path / "a").rmdir()
    (tmp_path / "b").rmdir()
    return request.param


def write_dir(path, text):
    with io.atomic_dir(path) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text(text)


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_folder_is_replaced_whole_keeping_its_mode(tmp_path, swap):
    target = tmp_path / "m"
    write_dir(target, "one")
    (target / "stale.txt").write_text("from the old folder")
    target.chmod(0o750)
    write_dir(target, "two")
    assert (target / "sub" / "a.txt").read_text() == "two" and not (target / "stale.txt").exists()
    assert target.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .part, no .old


def test_a_failed_write_leaves_the_old_folder(tmp_path, swap):
    write_dir(tmp_path / "m", "one")
    with pytest.raises(RuntimeError), io.atomic_dir(tmp_path / "m") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert (tmp_path / "m" / "sub" / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_writes_go_through_a_symlink_to_its_target(tmp_path, swap):
    real, link = tmp_path / "store" / "model", tmp_path / "model"
    write_dir(real, "one")
    link.symlink_to(real)
    write_dir(link, "two")
    assert link.is_symlink() and (real / "sub" / "a.txt").read_text() == "two"
    (tmp_path / "notes.txt").write_text("a")
    (tmp_path / "notes-link.txt").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "notes.txt").chmod(0o600)
    io.write_json(tmp_path / "notes-link.txt", {"b": 1})
    assert (tmp_path / "notes-link.txt").is_symlink() and (tmp_path / "notes.txt").read_text().startswith("{")
    assert (tmp_path / "notes.txt").stat().st_mode & 0o777 == 0o600  # a file keeps its mode too


def kill_between_the_renames(monkeypatch):
    """The two-rename swap, killed after its first rename: the folder sits at .NAME.old."""
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed: nothing after the first rename happens
        replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace_then_die)
    return lambda: monkeypatch.setattr(io.os, "replace", replace)


def test_a_model_killed_mid_swap_still_loads(tmp_path, monkeypatch):
    model = random_early_exit()
    model.save_pretrained(tmp_path / "model")
    restore = kill_between_the_renames(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "model")
    restore()
    assert not (tmp_path / "model").exists() and (tmp_path / ".model.old").is_dir()
    loaded = EarlyExitHubert.from_pretrained(tmp_path / "model")
    assert (tmp_path / "model").is_dir() and not (tmp_path / ".model.old").exists()
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_backbone_killed_mid_swap_still_loads(tmp_path, monkeypatch):
    random_early_exit().save_pretrained(tmp_path / "model")
    restore = kill_between_the_renames(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        random_early_exit(seed=1).save_pretrained(tmp_path / "model")
    restore()
    assert HubertBackbone.from_pretrained(tmp_path / "model").num_layers == 3


def test_a_swap_killed_after_both_renames_is_tidied(tmp_path):
    write_dir(tmp_path / "m", "new")
    (tmp_path / ".m.old").mkdir()  # the old copy that was about to be removed
    io.recover_dir(tmp_path / "m")
    assert (tmp_path / "m" / "sub" / "a.txt").read_text() == "new" and not (tmp_path / ".m.old").exists()


def test_leftovers_of_dead_writers_are_cleaned_and_only_those(tmp_path, swap):
    dead = dead_pid()
    leftovers = [f".m.{dead}.abcd_123.part", f".f.json.{dead}.x1y2z3w4.part"]
    kept = [f".m.{os.getpid()}.abcdefgh.part", ".m.mine.part", "m.part", f".other.{dead}.abcdefgh.part"]
    for name in leftovers + kept:
        (tmp_path / name).mkdir() if name.startswith(".m.") else (tmp_path / name).write_text("x")
    write_dir(tmp_path / "m", "one")
    io.write_json(tmp_path / "f.json", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["m", "f.json"])


def test_the_run_lock_admits_one_run(tmp_path):
    out = tmp_path / "run"
    with io.run_lock(out):
        with pytest.raises(ValueError, match=rf"^{out} is in use by another daisy run \(pid {os.getpid()}\)$"):
            with io.run_lock(out):
                pass
    with io.run_lock(out):  # released on exit
        pass
    hold = f"from daisy import io\nwith io.run_lock({str(out)!r}):\n print(1, flush=True)\n input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(ValueError, match=rf"in use by another daisy run \(pid {holder.pid}\)"):
            with io.run_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with io.run_lock(out):  # a killed holder leaves no lock behind
        pass


def test_file_names_that_are_not_utf8_print(tmp_path):
    name = os.fsdecode(b"caf\xe9.wav")
    assert io.shown(tmp_path / name) == f"{tmp_path}/caf\\xe9.wav"
    assert io.shown("caf\u00e9.wav") == "caf\u00e9.wav"


def test_staged_outputs_land_together_or_leave_the_last_set_whole(tmp_path):
    from daisy.io import staged_outputs

    out = tmp_path / "out"
    with staged_outputs(out) as stage:
        (stage / "a.json").write_text("1")
        (stage / "a.png").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png"]

    class Killed(Exception):
        pass

    with pytest.raises(Killed), staged_outputs(out) as stage:
        (stage / "a.json").write_text("2")  # written, then the run dies before its plot
        raise Killed
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png"]
    assert (out / "a.json").read_text() == "1"  # the last run's set, whole
    with staged_outputs(out) as stage:
        (stage / "a.json").write_text("3")
        (stage / "a.png").write_text("3")
    assert [(out / n).read_text() for n in ("a.json", "a.png")] == ["3", "3"]
