#!/usr/bin/env python3
"""Fetch ONNX Runtime's C/C++ headers from Debian's `libonnxruntime-dev` package.

The onnxruntime pip wheel ships no headers, and none are committed here. This script takes the package from
the Debian suite after bookworm (trixie) on the mirror this machine's apt is configured with, checks the
package index against the suite's signed InRelease (gpgv + Debian's keyring, when present) and the package
against the index's SHA256, and unpacks only the headers:

    python scripts/fetch_ort_headers.py build/ort-headers    # prints the include directory

Set ONNXRUNTIME_INCLUDE_DIR to skip all this and use headers you already have.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SUITE = "trixie"
PACKAGE = "libonnxruntime-dev"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def mirror() -> str:
    """The first Debian archive URI in apt's configuration (deb822 or one-line format)."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file() and f.suffix in ("", ".list", ".sources"):
            texts.append(f.read_text(errors="replace"))
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if "security" not in m.group(1):
                return m.group(1).rstrip("/")
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            if "security" not in m.group(1) and "debian" in m.group(1):
                return m.group(1).rstrip("/")
    raise SystemExit("error: no Debian mirror found in /etc/apt; set ONNXRUNTIME_INCLUDE_DIR to ONNX Runtime's headers")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def verified_packages_index(base: str, suite: str = SUITE) -> bytes:
    rel = "main/binary-amd64/Packages.xz"
    index = get(f"{base}/dists/{suite}/{rel}")
    inrelease = get(f"{base}/dists/{suite}/InRelease")
    if KEYRING.is_file() and shutil.which("gpgv"):
        with tempfile.NamedTemporaryFile() as f:
            f.write(inrelease)
            f.flush()
            r = subprocess.run(["gpgv", "--keyring", str(KEYRING), f.name], capture_output=True)
            if r.returncode != 0:
                raise SystemExit(f"error: the {suite} InRelease signature does not verify:\n{r.stderr.decode()}")
    else:
        print("warning: gpgv or Debian's keyring is missing; the index signature is not checked", file=sys.stderr)
    sha = hashlib.sha256(index).hexdigest()
    listed = re.search(rf"^ ([0-9a-f]{{64}})\s+\d+\s+{re.escape(rel)}$", inrelease.decode(errors="replace"), re.M)
    if not listed or listed.group(1) != sha:
        raise SystemExit(f"error: {rel} does not match the SHA256 in {suite}'s InRelease")
    return lzma.decompress(index)


def package_entry(index: bytes, package: str = PACKAGE, suite: str = SUITE) -> dict[str, str]:
    for stanza in index.decode(errors="replace").split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
            return dict(re.findall(r"^(\w[\w-]*): (.*)$", stanza, re.M))
    raise SystemExit(f"error: {package} is not in Debian {suite}")


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a .deb (an `ar` archive)."""
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit("error: the downloaded package is not a .deb archive")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        name = data[pos : pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48 : pos + 58].decode().strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "build/ort-headers").resolve()
    include = dest / "usr" / "include" / "onnxruntime"
    if (include / "onnxruntime_cxx_api.h").is_file():
        print(include)
        return
    base = mirror()
    entry = package_entry(verified_packages_index(base))
    deb = get(f"{base}/{entry['Filename']}")
    if hashlib.sha256(deb).hexdigest() != entry["SHA256"]:
        raise SystemExit(f"error: {entry['Filename']} does not match its SHA256 in the package index")
    data_name = next(n for n in ar_members(deb) if n.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(ar_members(deb)[data_name])) as tar:
        headers = [m for m in tar.getmembers() if m.name.lstrip("./").startswith("usr/include/") and (m.isfile() or m.isdir())]
        tar.extractall(dest, members=headers, filter="data")
    print(f"fetched {PACKAGE} {entry['Version']} headers from {base}", file=sys.stderr)
    print(include)


if __name__ == "__main__":
    main()
