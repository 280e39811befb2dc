"""The JSONL manifest: entries, several appending processes, torn lines, bad lines."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from safeinfer.errors import ConfigError, ManifestError
from safeinfer.manifest import (
    Manifest,
    ManifestEntry,
    find_manifests,
    read_manifest,
    read_manifests,
)
from safeinfer.writer import WriteResult, atomic_write

DIGEST = "0" * 64


def entry(path: str = "a.png", size: int = 1, **fields: object) -> dict[str, object]:
    return {"path": path, "bytes": size, "sha256": DIGEST, **fields}


def test_record_stores_relative_path(tmp_path: Path) -> None:
    result = atomic_write(tmp_path / "images" / "cat.png", b"png bytes", durability="none")
    with Manifest(tmp_path / "manifest.jsonl") as manifest:
        written = manifest.record(result, seed=7, prompt="a cat ✓")
    assert written["path"] == "images/cat.png"

    [read] = read_manifest(tmp_path / "manifest.jsonl")
    assert read.path == "images/cat.png"
    assert read.bytes == len(b"png bytes")
    assert read.sha256 == hashlib.sha256(b"png bytes").hexdigest()
    assert read.fields == {"seed": 7, "prompt": "a cat ✓"}
    assert read.line == 1
    assert read.absolute_path == tmp_path / "images" / "cat.png"
    assert read.absolute_path.read_bytes() == b"png bytes"


def test_line_format_keys_first(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    with Manifest(path, durability="none") as manifest:
        manifest.append({"seed": 1, "sha256": DIGEST, "bytes": 3, "path": "x.png"})
    line = path.read_text(encoding="utf-8")
    assert line.endswith("\n")
    assert list(json.loads(line)) == ["path", "bytes", "sha256", "seed"]


def test_record_relative_paths_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = WriteResult(path=Path("out/img/x.png"), bytes=1, sha256=DIGEST)
    with Manifest("out/manifest-0.jsonl") as manifest:
        assert manifest.record(result)["path"] == "img/x.png"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"bytes": 1, "sha256": DIGEST}, "'path'"),
        (entry(path=""), "'path'"),
        (entry(path="/etc/passwd"), "relative"),
        (entry(path="C:\\x.png"), "relative"),
        (entry(path="../x.png"), "inside"),
        (entry(path="a/../../x.png"), "inside"),
        (entry(size=-1), "'bytes'"),
        (entry(size=True), "'bytes'"),  # type: ignore[arg-type]
        ({"path": "a", "bytes": 1, "sha256": "ABC"}, "'sha256'"),
        (entry(value=float("nan")), "Out of range float"),
        (entry(value=object()), "not JSON serializable"),
    ],
)
def test_append_rejects_invalid_entry(tmp_path: Path, bad: dict[str, object], message: str) -> None:
    path = tmp_path / "manifest.jsonl"
    with Manifest(path) as manifest, pytest.raises(ManifestError, match=message):
        manifest.append(bad)
    assert path.read_bytes() == b""


def test_record_rejects_clashing_fields(tmp_path: Path) -> None:
    result = WriteResult(path=tmp_path / "x.png", bytes=1, sha256=DIGEST)
    with Manifest(tmp_path / "manifest.jsonl") as manifest, pytest.raises(ManifestError):
        manifest.record(result, bytes=2)


def test_append_after_close_raises(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.jsonl")
    manifest.close()
    manifest.close()
    assert manifest.closed
    with pytest.raises(ManifestError, match="closed"):
        manifest.append(entry())


def test_invalid_durability_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        Manifest(tmp_path / "m.jsonl", durability="always")  # type: ignore[arg-type]


def test_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "manifest.jsonl"
    with Manifest(path, durability="full") as manifest:
        manifest.append(entry())
    assert len(read_manifest(path)) == 1


def test_torn_last_line_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "manifest.jsonl"
    line = json.dumps(entry("b.png"))
    path.write_text(json.dumps(entry("a.png")) + "\n" + line[:25])
    with caplog.at_level(logging.WARNING, logger="safeinfer.manifest"):
        entries = read_manifest(path)
    assert [item.path for item in entries] == ["a.png"]
    assert "torn line 2" in caplog.text


def test_complete_last_line_without_newline_kept(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(entry("a.png")))
    assert [item.path for item in read_manifest(path)] == ["a.png"]


def test_append_after_torn_line_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(entry("a.png")) + "\n" + json.dumps(entry("b.png"))[:30])
    with Manifest(path) as manifest:
        manifest.append(entry("c.png"))
    entries = read_manifest(path)
    assert [item.path for item in entries] == ["a.png", "c.png"]
    assert entries[1].line == 3


@pytest.mark.parametrize(
    "bad_line",
    [b"not json", b"[1, 2]", b'{"path": "a.png"}', b'{"path": "a.png", "bytes": 1} trailing'],
)
def test_bad_middle_line_raises(tmp_path: Path, bad_line: bytes) -> None:
    path = tmp_path / "manifest.jsonl"
    good = json.dumps(entry()).encode()
    path.write_bytes(good + b"\n" + bad_line + b"\n" + good + b"\n")
    with pytest.raises(ManifestError, match=r"manifest\.jsonl, line 2"):
        read_manifest(path)


def test_zero_filled_tail_skipped(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(json.dumps(entry()).encode() + b"\n" + b"\0" * 64)
    assert len(read_manifest(path)) == 1


def _append_many(path: str, worker: int, count: int) -> None:
    with Manifest(path, durability="none") as manifest:
        for index in range(count):
            # Lines longer than a pipe buffer would show interleaving if writes split.
            manifest.append(entry(f"w{worker}/{index}.png", worker=worker, pad="x" * 5000))


def test_several_processes_append(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_append_many, args=(str(path), worker, 300)) for worker in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    entries = read_manifest(path)
    assert len(entries) == 1200
    assert len({item.path for item in entries}) == 1200
    assert all(len(item.fields["pad"]) == 5000 for item in entries)


def test_find_and_read_all_manifests(tmp_path: Path) -> None:
    for name, paths in (("manifest.jsonl", ["a"]), ("manifest-1.jsonl", ["b", "c"])):
        with Manifest(tmp_path / name, durability="none") as manifest:
            for item in paths:
                manifest.append(entry(item))
    (tmp_path / "other.jsonl").write_text("garbage\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.jsonl").write_text("garbage\n")

    found = find_manifests(tmp_path)
    assert found == [tmp_path / "manifest-1.jsonl", tmp_path / "manifest.jsonl"]
    from_root = read_manifests(tmp_path)
    assert sorted(item.path for item in from_root) == ["a", "b", "c"]
    from_files = read_manifests([tmp_path / "manifest.jsonl"])
    assert [item.manifest for item in from_files] == [tmp_path / "manifest.jsonl"]


def test_entry_to_dict_round_trip() -> None:
    item = ManifestEntry(path="x.png", bytes=2, sha256=DIGEST, fields={"seed": 3})
    assert item.to_dict() == {"path": "x.png", "bytes": 2, "sha256": DIGEST, "seed": 3}


def test_new_manifest_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        Manifest(tmp_path / "manifest.jsonl").close()
    finally:
        os.umask(old)
    assert (tmp_path / "manifest.jsonl").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("cut", [10, 25, 40, 47, 60, 85, 90, 121, 124, -3, -1])
def test_torn_middle_line_skipped(tmp_path: Path, cut: int) -> None:
    # Cuts land inside a key, a string value, the number, the literal and the hex digest.
    torn = json.dumps(entry("b.png", 12345, flag=False, note="é"), ensure_ascii=False)
    path = tmp_path / "manifest.jsonl"
    good = json.dumps(entry("a.png"))
    path.write_bytes(f"{good}\n".encode() + torn.encode()[:cut] + f"\n{good}\n".encode())
    assert [item.path for item in read_manifest(path)] == ["a.png", "a.png"]


@pytest.mark.parametrize("path", ["../secret", "images/../../secret", "/etc/hostname", "C:/x"])
def test_absolute_path_rejects_escape(tmp_path: Path, path: str) -> None:
    item = ManifestEntry(path=path, bytes=1, sha256=DIGEST, manifest=tmp_path / "manifest.jsonl")
    with pytest.raises(ManifestError, match="escapes the manifest folder"):
        _ = item.absolute_path


def test_read_keeps_escaping_entry(tmp_path: Path) -> None:
    # The line is well formed, so reading it works; only following its path fails.
    (tmp_path / "manifest.jsonl").write_text(json.dumps(entry("../../etc/hostname")) + "\n")
    (item,) = read_manifests(tmp_path)
    with pytest.raises(ManifestError, match=r"manifest\.jsonl, line 1: path '\.\./\.\./etc"):
        _ = item.absolute_path


@pytest.mark.parametrize("link", ["images", "images/a.png"])
def test_absolute_path_rejects_symlink_out(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    (outside / "images").mkdir(parents=True)
    (outside / "images" / "a.png").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    if link == "images":
        (root / "images").rmdir()
    (root / link).symlink_to(outside / link)
    item = ManifestEntry(path="images/a.png", bytes=1, sha256=DIGEST, manifest=root / "m.jsonl")
    with pytest.raises(ManifestError, match="escapes the manifest folder"):
        _ = item.absolute_path


def test_absolute_path_allows_inside(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "images" / "a.png")
    manifest = tmp_path / "manifest.jsonl"
    for path in ("images/a.png", "images/../link.png", "missing/b.png"):
        item = ManifestEntry(path=path, bytes=1, sha256=DIGEST, manifest=manifest)
        assert item.absolute_path == tmp_path / path


def test_record_rejects_file_outside_folder(tmp_path: Path) -> None:
    result = WriteResult(path=tmp_path / "x.png", bytes=1, sha256=DIGEST)
    manifest_path = tmp_path / "run" / "manifest.jsonl"
    manifest_path.parent.mkdir()
    with Manifest(manifest_path) as manifest, pytest.raises(ManifestError, match="outside"):
        manifest.record(result)
    assert manifest_path.read_bytes() == b""
