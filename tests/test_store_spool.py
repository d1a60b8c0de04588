"""The spool writes raw messages durably, once, and only inside its own directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.store.spool import Spool, SpoolError

MESSAGE = b"From: alice@example.com\r\nTo: 15551234567@fax.local\r\n\r\nhello\r\n"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def test_write_stores_complete_file_named_by_job(spool: Spool) -> None:
    """A written message is all there, under the job id, and readable back."""
    path = spool.write("J0123ABC", MESSAGE)
    assert path == spool.root / "J0123ABC.eml"
    assert path.read_bytes() == MESSAGE
    assert spool.read(path) == MESSAGE
    # Owner only: the group is the service's own (see Spool.__init__), tests/test_file_modes.py
    # checks the same under umask 022.
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_write_leaves_no_temp_files(spool: Spool) -> None:
    """After writes only the messages remain in the directory."""
    spool.write("J1", MESSAGE)
    spool.write("J2", b"x" * 100_000)
    assert sorted(p.name for p in spool.root.iterdir()) == ["J1.eml", "J2.eml"]
    assert spool.messages() == [spool.root / "J1.eml", spool.root / "J2.eml"]


def test_write_fsyncs_file_and_directory(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's data and the directory entry are both fsync'd before write returns."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    spool.write("J1", MESSAGE)
    root = str(spool.root.resolve())
    assert any(name.startswith(root + "/.J1.eml.") for name in synced), synced
    assert synced[-1] == root


def test_write_refuses_to_clobber_another_message(spool: Spool) -> None:
    """A second write for the same id with other bytes fails and the first message stays."""
    path = spool.write("J1", MESSAGE)
    with pytest.raises(SpoolError, match="already holds another message"):
        spool.write("J1", b"a different message")
    assert path.read_bytes() == MESSAGE
    assert [p.name for p in spool.root.iterdir()] == ["J1.eml"]


def test_repeated_identical_write_is_harmless(spool: Spool) -> None:
    """Writing the same message for the same job again returns the same file."""
    first = spool.write("J1", MESSAGE)
    assert spool.write("J1", MESSAGE) == first
    assert first.read_bytes() == MESSAGE


def test_failed_write_removes_its_temp_file(spool: Spool) -> None:
    """A write that fails midway leaves neither a message nor a temp file behind."""
    with pytest.raises(TypeError):
        spool.write("J1", "not bytes")  # type: ignore[arg-type]
    assert list(spool.root.iterdir()) == []


@pytest.mark.parametrize("job_id", ["../etc/passwd", "a/b", "", ".hidden", "J1 2"])
def test_unsafe_job_ids_are_refused(spool: Spool, job_id: str) -> None:
    """Only our own id alphabet makes a file name; path tricks are refused."""
    with pytest.raises(SpoolError):
        spool.write(job_id, MESSAGE)


def test_remove_is_idempotent(spool: Spool) -> None:
    """Removing twice is fine; the file is gone after the first."""
    path = spool.write("J1", MESSAGE)
    spool.remove(path)
    assert not path.exists()
    spool.remove(path)


def test_paths_outside_the_spool_are_refused(spool: Spool, tmp_path: Path) -> None:
    """A path from the store that points elsewhere is neither read nor deleted."""
    spool.write("J1", MESSAGE)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    with pytest.raises(SpoolError):
        spool.remove(outside)
    with pytest.raises(SpoolError):
        spool.read(spool.root / ".." / "precious.txt")
    assert outside.read_text() == "keep me"


def test_stale_temp_files_are_swept_fresh_ones_kept(spool: Spool) -> None:
    """Temp files of interrupted writes go once old; a recent one may be a write in progress."""
    path = spool.write("J1", MESSAGE)
    old = spool.root / ".J2.eml.0123456789ab.tmp"
    old.write_bytes(b"partial")
    os.utime(old, (1000.0, 1000.0))
    fresh = spool.root / ".J3.eml.0123456789ab.tmp"
    fresh.write_bytes(b"partial")
    assert spool.remove_stale_temp_files(older_than=3600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert path.exists()
    assert spool.messages() == [path]


def test_a_kept_draft_whose_process_died_loses_its_temp_name_at_the_next_start(
    spool: Spool,
) -> None:
    """A draft kept as its job's message and never closed (a kill at after_commit) has its
    temp name removed at once, however fresh; the message stays under its job's name."""
    draft = spool.draft(b"first part, ")
    draft.write(MESSAGE)
    kept = draft.keep("J1")
    temp = draft.path
    unkept = spool.draft(b"still arriving")  # a write in progress: left alone
    try:
        assert spool.remove_stale_temp_files(older_than=3600) == 1
        assert not temp.exists()
        assert unkept.path.exists()
        assert kept.read_bytes() == b"first part, " + MESSAGE
        assert kept.stat().st_nlink == 1
        assert spool.messages() == [kept]
    finally:
        draft.close()
        unkept.close()


def test_converted_attachments_are_kept_beside_and_removed_with_their_message(
    tmp_path: Path,
) -> None:
    """PDFs made at DATA are written durably beside the message, read back by index, and go
    when the message is removed (cleanup, or a start-up's removal of an orphaned message)."""
    spool = Spool(tmp_path / "spool")
    message = spool.write("J1", b"raw message")
    spool.write_converted("J1", 2, b"%PDF-two")
    spool.write_converted("J1", 0, b"%PDF-zero")
    other = spool.write("J10", b"another message")
    spool.write_converted("J10", 0, b"%PDF-other")
    assert spool.read_converted(message) == {0: b"%PDF-zero", 2: b"%PDF-two"}
    assert spool.messages() == [message, other]
    spool.remove(message)
    assert sorted(p.name for p in spool.root.iterdir()) == ["J10.0.pdf", "J10.eml"]
    assert spool.read_converted(other) == {0: b"%PDF-other"}
