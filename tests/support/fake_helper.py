"""A real `docker-credential-<name>` executable for tests, backed by a JSON file.

It speaks the helper protocol (store/get/erase on stdin/stdout) and can be told to
misbehave through its environment: FAKE_HELPER_SLEEP (seconds, also leaves a grandchild
running to prove the process group is killed) and FAKE_HELPER_FAIL (echo stdin, exit 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = """#!{python}
import json, os, subprocess, sys, time
db = {db!r}
if os.environ.get("FAKE_HELPER_SLEEP"):
    child = subprocess.Popen(["sleep", "300"])
    with open(db + ".grandchild", "w") as f:
        f.write(str(child.pid))
    time.sleep(float(os.environ["FAKE_HELPER_SLEEP"]))
data = sys.stdin.read()
if os.environ.get("FAKE_HELPER_FAIL"):
    print("refusing to store " + data)
    sys.exit(1)
store = json.load(open(db)) if os.path.exists(db) else {{}}
verb = sys.argv[1]
if verb == "store":
    entry = json.loads(data)
    store[entry["ServerURL"]] = entry
elif verb == "get":
    if data.strip() not in store:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(store[data.strip()]))
elif verb == "erase":
    if store.pop(data.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
json.dump(store, open(db, "w"))
"""


def install_fake_helper(bin_dir: Path, name: str) -> Path:
    """Write `bin_dir/docker-credential-NAME`; returns the JSON file it stores into."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    db = bin_dir / f"{name}.json"
    exe = bin_dir / f"docker-credential-{name}"
    exe.write_text(SCRIPT.format(python=sys.executable, db=str(db)))
    exe.chmod(0o755)
    return db
