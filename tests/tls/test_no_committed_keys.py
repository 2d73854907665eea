"""No private key is committed: the TLS tests make theirs at run time (``tests/helpers/
certificates.py``), and the README shows how to make one, never one.

The files checked are git's (``git ls-files``) when the checkout is a git work tree, else every
file under the project's root but version control's, the virtual environments' and caches'.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: A PEM private key block of any kind (PKCS#8, RSA, EC, OpenSSH, encrypted), spelled so that
#: this file does not match itself.
PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z0-9]+ )*PRIVATE" rb" KEY-----")
SKIPPED_DIRECTORIES = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache"}


def project_files() -> list[Path]:
    git = shutil.which("git")
    if git is not None:
        listed = subprocess.run(
            [git, "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False
        )
        if listed.returncode == 0:
            return [ROOT / name.decode() for name in listed.stdout.split(b"\0") if name]
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file() and not SKIPPED_DIRECTORIES.intersection(path.relative_to(ROOT).parts)
    ]


def test_no_private_key_is_committed() -> None:
    files = project_files()
    assert any(path.name == "pyproject.toml" for path in files), "the project's files were found"

    holding_keys = [
        str(path.relative_to(ROOT))
        for path in files
        if path.is_file() and PRIVATE_KEY.search(path.read_bytes())
    ]

    assert holding_keys == []


def test_the_pattern_finds_a_key_block() -> None:
    for kind in (b"", b"RSA ", b"EC ", b"ENCRYPTED ", b"OPENSSH "):
        block = b"-----BEGIN " + kind + b"PRIVATE KEY-----\nMIIB\n"
        assert PRIVATE_KEY.search(block), kind
