"""One serving process per data dir, and the site its lease holder ids start with."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from e2eproxy.data_dir_claim import LOCK_NAME, DataDirInUse, claim_data_dir


def test_the_claim_is_exclusive_and_its_site_outlives_the_process(tmp_path: Path) -> None:
    first = claim_data_dir(tmp_path)
    assert first is not None
    with pytest.raises(DataDirInUse, match="another e2eproxy is running on the data dir"):
        claim_data_dir(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / LOCK_NAME).st_mode) == 0o600
    first.release()
    again = claim_data_dir(tmp_path)
    assert again is not None and again.site == first.site
    again.release()


def test_another_data_dir_is_another_site(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = claim_data_dir(tmp_path / "a"), claim_data_dir(tmp_path / "b")
    assert a is not None and b is not None and a.site != b.site
    a.release()
    b.release()


def test_a_copied_data_dir_is_another_site(tmp_path: Path) -> None:
    """The same id at another path (a copy) is not mistaken for the original's successor."""
    (tmp_path / "a").mkdir()
    (tmp_path / "copy").mkdir()
    a = claim_data_dir(tmp_path / "a")
    assert a is not None
    (tmp_path / "copy" / LOCK_NAME).write_bytes((tmp_path / "a" / LOCK_NAME).read_bytes())
    copy = claim_data_dir(tmp_path / "copy")
    assert copy is not None and copy.site != a.site
    a.release()
    copy.release()


def test_the_lock_goes_with_a_killed_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from e2eproxy.data_dir_claim import claim_data_dir; "
         "claim = claim_data_dir(Path(sys.argv[1])); print(claim.site, flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        site = holder.stdout.readline().strip()
        with pytest.raises(DataDirInUse):
            claim_data_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)
    successor = claim_data_dir(tmp_path)
    assert successor is not None and successor.site == site
    successor.release()


def test_a_damaged_id_is_made_anew(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("not an id\n")
    claim = claim_data_dir(tmp_path)
    assert claim is not None
    claim.release()
    text = (tmp_path / LOCK_NAME).read_text().strip()
    assert len(text) == 32 and int(text, 16) >= 0
