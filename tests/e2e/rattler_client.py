#!/usr/bin/env python3
"""End-to-end conda client for condagate's integration tests (py-rattler).

Solves SPECs against CHANNELs, installs the result into PREFIX, checks that each
installed package's payload (share/demo/<name>.txt, as make_demo_channel.py builds
them) landed in the prefix, and prints ONE JSON line on stdout at the end:

    {"ok": bool, "outcome": "success"|"solve-failure"|"install-failure"|"verify-failure"|"timeout",
     "solved": [names], "installed": [names], "error": str|null}

"ok" is true when the outcome matched --expect. Exit code: 0 if it matched, 1 if not,
2 on bad arguments. Diagnostics go to stderr.

Modes select what rattler fetches per subdir:
  sharded  repodata_shards.msgpack.zst + shards (default SourceConfig())
  zst      repodata.json.zst (HEAD .zst/.bz2, then GET)
  json     plain repodata.json

Example:
  rattler_client.py --channel http://127.0.0.1:8080/t/TOKEN/mychan --spec alpha \\
      --prefix /tmp/p --cache-dir /tmp/c --mode zst --expect success
"""

import argparse
import asyncio
import glob
import json
import os
import sys
import traceback
from importlib.metadata import version


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channel", action="append", required=True, help="channel URL (repeatable)")
    p.add_argument("--spec", action="append", required=True, help="match spec (repeatable)")
    p.add_argument("--prefix", required=True, help="environment prefix to install into")
    p.add_argument("--cache-dir", required=True,
                   help="cache root: repodata goes to <dir>/repodata, packages to <dir>/pkgs")
    p.add_argument("--mode", choices=("sharded", "zst", "json"), default="sharded")
    p.add_argument("--header", action="append", default=[], help="'Name: value' sent with every request")
    p.add_argument("--platform", default="linux-64")
    p.add_argument("--expect", choices=("success", "solve-failure", "install-failure"), default="success")
    p.add_argument("--max-retries", type=int, default=3, help="retries for transient HTTP errors")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for solve + install together")
    return p.parse_args(argv)


def parse_headers(raw):
    headers = {}
    for h in raw:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad --header {h!r}, expected 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def source_config(rattler, mode):
    if mode == "sharded":
        return rattler.SourceConfig()
    if mode == "zst":
        return rattler.SourceConfig(sharded_enabled=False)
    return rattler.SourceConfig(sharded_enabled=False, zstd_enabled=False, bz2_enabled=False)


def installed_names(prefix):
    names = []
    for fn in sorted(glob.glob(os.path.join(prefix, "conda-meta", "*.json"))):
        with open(fn) as f:
            names.append(json.load(f)["name"])
    return sorted(names)


async def run(args, result):
    import rattler

    headers = parse_headers(args.header)
    # With headers= alone, py-rattler 0.28 sends no User-Agent at all; name it explicitly.
    client = rattler.Client.default_client(
        max_retries=args.max_retries,
        headers=headers or None,
        user_agent=f"py-rattler/{version('py-rattler')}",
    )
    gateway = rattler.Gateway(
        cache_dir=os.path.join(args.cache_dir, "repodata"),
        default_config=source_config(rattler, args.mode),
        client=client,
    )

    try:
        records = await rattler.solve(
            args.channel, args.spec, gateway=gateway, platforms=[args.platform, "noarch"]
        )
    except Exception as e:  # noqa: BLE001 - any failure here is a solve failure
        traceback.print_exc(file=sys.stderr)
        result["outcome"], result["error"] = "solve-failure", f"{type(e).__name__}: {e}"
        return
    result["solved"] = sorted(r.name.normalized for r in records)
    print(f"solved: {[str(r.file_name) + ' <- ' + str(r.url) for r in records]}", file=sys.stderr)

    try:
        await rattler.install(
            records,
            args.prefix,
            cache_dir=os.path.join(args.cache_dir, "pkgs"),
            client=client,
            show_progress=False,
        )
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        result["outcome"], result["error"] = "install-failure", f"{type(e).__name__}: {e}"
        result["installed"] = installed_names(args.prefix)
        return

    result["installed"] = installed_names(args.prefix)
    problems = []
    if result["installed"] != result["solved"]:
        problems.append(f"conda-meta lists {result['installed']}, solved {result['solved']}")
    for name in result["solved"]:
        payload = os.path.join(args.prefix, "share", "demo", f"{name}.txt")
        if not os.path.isfile(payload):
            problems.append(f"missing payload {payload}")
        elif f" {name} " not in open(payload).read():
            problems.append(f"unexpected payload content in {payload}")
    if problems:
        result["outcome"], result["error"] = "verify-failure", "; ".join(problems)
    else:
        result["outcome"] = "success"


def main():
    try:
        args = parse_args(sys.argv[1:])
        parse_headers(args.header)
    except SystemExit as e:
        sys.stderr.flush()
        os._exit(2 if e.code else 0)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)

    result = {"ok": False, "outcome": None, "solved": [], "installed": [], "error": None}
    try:
        asyncio.run(asyncio.wait_for(run(args, result), timeout=args.timeout))
    except asyncio.TimeoutError:
        result["outcome"], result["error"] = "timeout", f"timed out after {args.timeout}s"
    except BaseException as e:  # noqa: BLE001 - always report, never die silently
        traceback.print_exc(file=sys.stderr)
        result["outcome"] = result["outcome"] or "unexpected-error"
        result["error"] = result["error"] or f"{type(e).__name__}: {e}"

    result["ok"] = result["outcome"] == args.expect
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    # py-rattler 0.28 may abort the interpreter at teardown after a failed install
    # (see PROTOCOL.md); leave without running it so the exit code is ours.
    os._exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
