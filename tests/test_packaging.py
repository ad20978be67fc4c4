"""
The installed package, not the work tree: build a wheel, install it into a
fresh virtual env and run both twistd plugins' --help from there.  This
catches what packaging loses (the plugin file, package data).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from .conftest import ROOT


def test_installed_copy_has_both_plugins(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    [wheel] = wheels.glob("relay-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    # The dependencies come from the test environment's site-packages, added
    # as a plain path: its .pth files (among them the editable install of
    # this work tree) are not processed, so relay itself comes from the wheel.
    site = Path(sysconfig.get_paths()["purelib"])
    [fresh_site] = (venv / "lib").glob("python3*/site-packages")
    (fresh_site / "zz-test-dependencies.pth").write_text(str(site) + "\n")

    where = subprocess.run(
        [str(python), "-c", "import relay; print(relay.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout
    assert where.startswith(str(fresh_site)), where
    for side, option in [("edge", "--edge-id"), ("cloud", "--data-dir")]:
        result = subprocess.run(
            [str(python), "-c", "from twisted.scripts.twistd import run; run()", f"relay-{side}", "--help"],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert f"relay-{side} [options]" in result.stdout
        assert option in result.stdout
        assert "--config" in result.stdout
    console = subprocess.run(
        [str(venv / "bin" / "relay"), "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert console.returncode == 0, console.stderr
    assert console.stdout.strip().endswith(relay_version())


def relay_version() -> str:
    import relay

    return relay.__version__
