"""Recording stand-ins for ``gcloud``, ``kubectl``, ``gke-gcloud-auth-plugin`` and ``helm``, for
running deployments/gke/make_cluster.sh and the guide's commands with no cloud: installed on PATH under those names (small
scripts that run this file with ``CLOUD_CLI_TOOL`` set to the name), each call is appended to
``$CLOUD_CLI_STATE/calls.jsonl``; ``create`` remembers what it
made in ``$CLOUD_CLI_STATE/made.json`` and ``describe`` finds only what was made, as the cloud
would (exit 1, "NOT_FOUND", otherwise), and ``delete`` (or ``storage rm``) forgets it;
``kubectl get KIND NAME`` finds only a secret ``kubectl create secret`` made;
``compute regions describe`` prints the quotas recorded
in ``$CLOUD_CLI_STATE/quotas.txt``, if any. Nothing else is emulated: every other call
succeeds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def resource(args: list[str]) -> tuple[str, str] | None:
    """(kind, name) of a ``gcloud ... create|describe|delete NAME`` call: the command words
    before the verb, and its first positional argument."""
    if args[:2] == ["storage", "rm"]:  # `storage rm --recursive gs://BUCKET`: the bucket too
        names = [a for a in args[2:] if not a.startswith("-")]
        return ("storage buckets", names[0]) if names else None
    for verb in ("create", "describe", "delete"):
        if verb in args:
            at = args.index(verb)
            names = [a for a in args[at + 1 :] if not a.startswith("-")]
            if names:  # a service account is created by its id, described by its email
                return " ".join(args[:at]), names[0].split("@")[0]
    return None


def install(bin_dir: Path, tools: tuple[str, ...]) -> None:
    """Put a stand-in for each of ``tools`` in ``bin_dir`` (to go first, or alone, on PATH)."""
    for tool in tools:
        stub = bin_dir / tool
        stub.write_text(
            f'#!/bin/sh\nCLOUD_CLI_TOOL={tool} exec "{sys.executable}" "{__file__}" "$@"\n'
        )
        stub.chmod(0o755)


def main() -> int:
    tool = os.environ["CLOUD_CLI_TOOL"]
    args = sys.argv[1:]
    state = Path(os.environ["CLOUD_CLI_STATE"])
    with open(state / "calls.jsonl", "a") as calls:
        calls.write(json.dumps([tool, *args]) + "\n")
    if tool == "kubectl" and args[:1] == ["get"] and len(args) > 2:
        # `kubectl get KIND NAME`: found only if this stand-in created it
        made_path = state / "made.json"
        made = json.loads(made_path.read_text()) if made_path.exists() else []
        if [f"kubectl {args[1]}", args[2]] in made:
            print(f"{args[1]}/{args[2]}")
            return 0
        print(f'Error from server (NotFound): {args[1]}s "{args[2]}" not found', file=sys.stderr)
        return 1
    if tool == "kubectl" and args[:1] == ["create"] and "--dry-run=client" not in args:
        made_path = state / "made.json"
        made = json.loads(made_path.read_text()) if made_path.exists() else []
        names = [a for a in args[1:] if not a.startswith("-")]
        if len(names) >= 3 and names[0] == "secret":
            made.append([f"kubectl {names[0]}", names[2]])
            made_path.write_text(json.dumps(made))
    if tool != "gcloud":
        if tool == "kubectl" and "--dry-run=client" in args:
            print("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tqflow")
        if tool == "kubectl" and args[-2:] == ["-f", "-"]:
            sys.stdin.read()  # the manifest piped in
        return 0
    if args[:3] == ["compute", "regions", "describe"]:
        # The project's quotas as gcloud prints them with --format 'value(...)': a recorded
        # answer, when the test gives one.
        recorded = state / "quotas.txt"
        if recorded.exists():
            print(recorded.read_text(), end="")
        return 0
    made_path = state / "made.json"
    made = json.loads(made_path.read_text()) if made_path.exists() else []
    found = resource(args)
    if found is not None and "describe" in args:
        if list(found) in made:
            print(f"name: {found[1]}")
            return 0
        print(f"ERROR: (gcloud) NOT_FOUND: {found[1]}", file=sys.stderr)
        return 1
    if found is not None and "create" in args:
        made.append(list(found))
        made_path.write_text(json.dumps(made))
    if found is not None and ("delete" in args or args[:2] == ["storage", "rm"]):
        if list(found) not in made:
            print(f"ERROR: (gcloud) NOT_FOUND: {found[1]}", file=sys.stderr)
            return 1
        made.remove(list(found))
        made_path.write_text(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
