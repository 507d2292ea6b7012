#!/usr/bin/env python3
"""Build the small, real demo conda channels used by condagate's end-to-end tests.

Usage: make_demo_channel.py OUTPUT_DIR

Creates OUTPUT_DIR/mychan (private) and OUTPUT_DIR/pubchan (public) from scratch:
real .tar.bz2 packages written here, some converted to .conda with
conda-package-handling (`cph transmute`), every subdir indexed with py-rattler's
`index_fs` (repodata.json, repodata.json.zst, repodata_shards.msgpack.zst, shards/).

Needs tests/e2e/requirements-dev.txt (py-rattler, conda-package-handling).
The committed copy lives in config/channels; regenerate it with
    target/e2e-venv/bin/python tests/e2e/make_demo_channel.py config/channels

Packages are byte-for-byte reproducible (fixed timestamps, fixed tar metadata);
index files carry creation times and so differ between runs.
"""

import asyncio
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile

import rattler.index
from conda_package_handling import api as cph

# 2024-01-01T00:00:00Z, in milliseconds as conda writes it in index.json.
TIMESTAMP_MS = 1704067200000
MTIME = TIMESTAMP_MS // 1000

# channel -> list of (location inside the channel, packages). A location is
# "<subdir>" or "label/<label>/<subdir>". A package is
# (name, version, build_number, depends, format).
LAYOUT = {
    "mychan": [
        ("noarch", [
            ("alpha", "1.0", 0, ["beta >=1.0"], ".tar.bz2"),
            ("beta", "1.0", 0, [], ".tar.bz2"),
            ("beta-utils", "1.0", 0, ["beta"], ".conda"),
            ("secretpkg", "1.0", 0, ["beta"], ".conda"),
        ]),
        ("linux-64", [
            ("gamma", "1.0", 0, [], ".tar.bz2"),
        ]),
        ("label/dev/noarch", [
            ("alpha", "2.0", 0, ["beta >=1.0"], ".tar.bz2"),
            ("beta", "1.0", 0, [], ".tar.bz2"),
        ]),
        ("label/dev/linux-64", []),
    ],
    "pubchan": [
        ("noarch", [
            ("hello", "1.0", 0, [], ".tar.bz2"),
            ("world", "1.0", 0, ["hello"], ".conda"),
        ]),
        ("linux-64", []),
    ],
}


def payload_for(name, version):
    line = f"condagate demo package {name} {version}\n"
    return (line * 8).encode()


def _add(tar, path, data, mode=0o644):
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _json(obj):
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def build_tar_bz2(dest_dir, name, version, build_number, depends, subdir):
    """Write <name>-<version>-<build>.tar.bz2 into dest_dir and return its path."""
    build = f"{build_number}"
    payload_path = f"share/demo/{name}.txt"
    payload = payload_for(name, version)
    index = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": build_number,
        "depends": list(depends),
        "license": "BSD-3-Clause",
        "subdir": subdir,
        "timestamp": TIMESTAMP_MS,
    }
    if subdir == "noarch":
        index["noarch"] = "generic"
    else:
        index["platform"], index["arch"] = {"linux-64": ("linux", "x86_64")}[subdir]
    paths = {
        "paths_version": 1,
        "paths": [{
            "_path": payload_path,
            "path_type": "hardlink",
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size_in_bytes": len(payload),
        }],
    }
    fn = os.path.join(dest_dir, f"{name}-{version}-{build}.tar.bz2")
    # tarfile's "w:bz2" output is deterministic for fixed member metadata.
    with tarfile.open(fn, "w:bz2", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "info/index.json", _json(index))
        _add(tar, "info/paths.json", _json(paths))
        _add(tar, "info/files", (payload_path + "\n").encode())
        _add(tar, payload_path, payload)
    return fn


def build_conda(dest_dir, tmp, name, version, build_number, depends, subdir):
    """Build a .tar.bz2 in tmp and convert it into dest_dir as .conda (cph transmute)."""
    src = build_tar_bz2(tmp, name, version, build_number, depends, subdir)
    errors = cph.transmute(src, ".conda", out_folder=dest_dir)
    if errors:
        raise SystemExit(f"cph transmute failed for {src}: {errors}")
    os.unlink(src)
    out = os.path.join(dest_dir, os.path.basename(src)[: -len(".tar.bz2")] + ".conda")
    if not os.path.isfile(out):
        raise SystemExit(f"cph transmute produced no {out}")
    _pin_zip_times(out)
    return out


def _pin_zip_times(path):
    """cph stamps metadata.json in the .conda zip with the current time; pin it
    (the inner .tar.zst members already carry our fixed mtimes)."""
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path + ".tmp", "w") as zout:
        for info, data in entries:
            pinned = zipfile.ZipInfo(info.filename, date_time=(2024, 1, 1, 0, 0, 0))
            pinned.compress_type = info.compress_type
            pinned.external_attr = info.external_attr
            pinned.create_system = info.create_system
            zout.writestr(pinned, data)
    os.replace(path + ".tmp", path)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)

    for channel, locations in LAYOUT.items():
        chan_dir = os.path.join(out, channel)
        if os.path.exists(chan_dir):
            shutil.rmtree(chan_dir)
        roots = set()
        with tempfile.TemporaryDirectory() as tmp:
            for location, packages in locations:
                subdir = location.rsplit("/", 1)[-1]
                loc_dir = os.path.join(chan_dir, location)
                os.makedirs(loc_dir)
                roots.add(os.path.dirname(loc_dir))
                for name, version, build_number, depends, fmt in packages:
                    if fmt == ".tar.bz2":
                        build_tar_bz2(loc_dir, name, version, build_number, depends, subdir)
                    else:
                        build_conda(loc_dir, tmp, name, version, build_number, depends, subdir)
        # Each channel root (<channel>, <channel>/label/<label>) is indexed on its own;
        # index_fs indexes every platform subdir it finds there, empty ones included.
        for root in sorted(roots):
            asyncio.run(rattler.index.index_fs(root, write_zst=True, write_shards=True, force=True))

    # Check every subdir ended up with the full set of index files; drop strays.
    expected = {"repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst"}
    for channel, locations in LAYOUT.items():
        for location, packages in locations:
            loc_dir = os.path.join(out, channel, location)
            present = set(os.listdir(loc_dir))
            missing = expected - present
            if missing:
                raise SystemExit(f"index_fs did not write {sorted(missing)} in {loc_dir}")
            if packages and not os.listdir(os.path.join(loc_dir, "shards")):
                raise SystemExit(f"index_fs wrote no shards in {loc_dir}")
    # index_fs leaves an empty ".tmp" directory in each root it indexes; drop it
    # and anything else hidden.
    for channel in LAYOUT:
        for dirpath, dirnames, filenames in os.walk(os.path.join(out, channel)):
            for entry in [d for d in dirnames if d.startswith(".")]:
                shutil.rmtree(os.path.join(dirpath, entry))
                dirnames.remove(entry)
            for entry in filenames:
                if entry.startswith("."):
                    os.unlink(os.path.join(dirpath, entry))
    print(f"demo channels written to {out}")


if __name__ == "__main__":
    main()
