#!/usr/bin/env python3
"""Checks META.json (PGXN meta spec 1.0.0) against the tree it describes.

Prints one "ok - ..." or "not ok - ..." line per check and exits 1 when one
failed. The version checks catch a release that bumped the extension
(traffic_control.control's default_version) or the Debian package
(debian/changelog) but not the PGXN distribution, or the other way round.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
# The keys PGXN refuses a distribution without (meta spec 1.0.0, "Required Fields").
REQUIRED = ["name", "abstract", "version", "maintainer", "license", "provides", "meta-spec"]
# License strings the spec names (a subset: the ones an extension would use).
KNOWN_LICENSES = {"postgresql", "bsd", "mit", "apache_2_0", "gpl_2", "gpl_3", "lgpl_2_1",
                  "lgpl_3_0", "artistic_2", "mozilla_2_0", "open_source", "restricted",
                  "unrestricted", "unknown"}
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")

failures = 0


def check(ok, what):
    global failures
    print(("ok - " if ok else "not ok - ") + what)
    if not ok:
        failures += 1


try:
    meta = json.loads((ROOT / "META.json").read_text())
    check(isinstance(meta, dict), "META.json parses as a JSON object")
except (OSError, ValueError) as error:
    check(False, f"META.json parses as JSON ({error})")
    sys.exit(1)

for key in REQUIRED:
    check(bool(meta.get(key)), f"META.json has the required key {key}")
check(meta.get("meta-spec", {}).get("version") == "1.0.0", "meta-spec version is 1.0.0")
version = meta.get("version", "")
check(bool(SEMVER.match(version)), f"version {version!r} is a semantic version")
license_ = meta.get("license")
check(isinstance(license_, str) and license_ in KNOWN_LICENSES,
      f"license {license_!r} is a string the spec knows")

control = (ROOT / "traffic_control.control").read_text()
default_version = re.search(r"^default_version\s*=\s*'([^']+)'", control, re.M).group(1)
check(meta.get("name") == "traffic_control", "name is the extension's, traffic_control")
check(version.startswith(default_version + "."),
      f"version {version} is the control file's default_version {default_version}")
provided = meta.get("provides", {}).get("traffic_control", {})
check(provided.get("version") == version, "provides.traffic_control.version equals version")
check(bool(provided.get("file")) and (ROOT / provided.get("file", "")).is_file(),
      "provides.traffic_control.file names a file of the tree")
changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
deb_version = re.search(r"\(([^)]+)\)", changelog).group(1)
check(deb_version.split("-")[0] == version,
      f"debian/changelog's upstream version {deb_version} equals version {version}")
pg = meta.get("prereqs", {}).get("runtime", {}).get("requires", {}).get("PostgreSQL", "")
check(pg.startswith(">= 15.0.0"), "prereqs: runtime requires PostgreSQL 15")

sys.exit(1 if failures else 0)
