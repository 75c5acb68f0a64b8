"""Fixtures shared by the kernel tests."""

import pytest

from sparseforge.kernels import extension, ops


@pytest.fixture
def broken_source(tmp_path, monkeypatch):
    """broken_source("csr_linear"): csrc/cpu/<name>.cpp does not compile for the rest of the
    test (a fresh build folder, no build remembered as failed, no library cached as loaded)."""

    def make(name: str) -> None:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / f"{name}.cpp").write_text("int broken( {\n")
        monkeypatch.setattr(extension, "CSRC", tmp_path / "src")
        monkeypatch.setenv("SPARSEFORGE_EXT_DIR", str(tmp_path / "ext"))
        monkeypatch.setattr(extension, "_build_failed", set())
        monkeypatch.setattr(ops, "_EAGER", {})  # no kernel remembered as built either
        extension.load.cache_clear()

    yield make
    extension.load.cache_clear()
