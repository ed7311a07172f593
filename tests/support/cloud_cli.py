"""Recording stand-ins for ``gcloud``, ``kubectl``, ``gke-gcloud-auth-plugin``, ``helm`` and
``docker``, for
running deployments/gke/make_cluster.sh and the guide's commands with no cloud: installed on PATH under those names (small
scripts that run this file with ``CLOUD_CLI_TOOL`` set to the name), each call is appended to
``$CLOUD_CLI_STATE/calls.jsonl``; ``create`` remembers what it
made in ``$CLOUD_CLI_STATE/made.json`` and ``describe`` finds only what was made, as the cloud
would (exit 1, "NOT_FOUND", otherwise), and ``delete`` (or ``storage rm``) forgets it (a cluster, with the Kubernetes objects in it);
``kubectl get KIND NAME`` finds only a secret ``kubectl create secret`` made (and gives its
keys); ``docker buildx`` builds and pushes, `docker`;
``storage buckets create`` also makes the bucket in the GCS stand-in at
``$STORAGE_EMULATOR_HOST``, when there is one; ``compute regions describe`` prints the quotas recorded
in ``$CLOUD_CLI_STATE/quotas.txt``, if any; ``billing projects describe`` says billing is
enabled unless ``$CLOUD_CLI_STATE/billing.txt`` says otherwise; ``projects describe`` gives a
project number; a node pool keeps the settings it was created (or updated) with, which its
``describe --format 'value(...)'`` prints as gcloud would. Nothing else is emulated: every other
call succeeds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

#: The number `gcloud projects describe` answers.
PROJECT_NUMBER = "123456789012"
#: The flags of a node pool's settings that `node-pools describe` reads back.
POOL_SETTINGS = ("--machine-type", "--disk-size", "--max-nodes")


def resource(args: list[str]) -> tuple[str, str] | None:
    """(kind, name) of a ``gcloud ... create|describe|delete NAME`` call: the command words
    before the verb, and its first positional argument."""
    if args[:2] == ["storage", "rm"]:  # `storage rm --recursive gs://BUCKET`: the bucket too
        names = [a for a in args[2:] if not a.startswith("-")]
        return ("storage buckets", names[0]) if names else None
    for verb in ("create", "describe", "delete", "update"):
        if verb in args:
            at = args.index(verb)
            names = [a for a in args[at + 1 :] if not a.startswith("-")]
            if names:  # a service account is created by its id, described by its email
                return " ".join(args[:at]), names[0].split("@")[0]
    return None


def docker(args: list[str]) -> int:
    """``docker buildx``: ``version`` answers; ``build`` reads the Dockerfile it names;
    ``imagetools inspect --format '{{json .Manifest.Digest}}'`` prints a digest made from the
    Dockerfile and the build arguments, so the same inputs give the same image, whatever its
    tag."""
    if (
        args[:2] != ["buildx", "version"]
        and args[:2] != ["buildx", "build"]
        and (args[:3] != ["buildx", "imagetools", "inspect"])
    ):
        print(f"docker stand-in: {' '.join(args)} is not emulated", file=sys.stderr)
        return 1
    state = Path(os.environ["CLOUD_CLI_STATE"])
    if args[1] == "build":
        dockerfile = Path(args[args.index("-f") + 1]).read_bytes()
        build_args = [args[i + 1] for i, a in enumerate(args) if a == "--build-arg"]
        digest = hashlib.sha256(dockerfile + json.dumps(build_args).encode()).hexdigest()
        images = state / "images.json"
        pushed = json.loads(images.read_text()) if images.exists() else {}
        pushed[args[args.index("-t") + 1]] = f"sha256:{digest}"
        images.write_text(json.dumps(pushed))
    if args[1] == "imagetools":
        print(json.dumps(json.loads((state / "images.json").read_text())[args[3]]))
    return 0


def create_bucket(endpoint: str, bucket: str) -> None:
    """The bucket, made in the GCS stand-in at ``endpoint`` (``STORAGE_EMULATOR_HOST``), as
    ``gcloud storage buckets create`` makes it in GCS."""
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=stand-in",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=60).close()


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
    if tool == "docker":
        return docker(args)
    if tool == "kubectl" and args[:1] == ["get"] and len(args) > 2:
        # `kubectl get KIND NAME`: found only if this stand-in created it; a Secret's key by
        # `-o jsonpath={.data.KEY}`, base64 as Kubernetes keeps it
        made_path = state / "made.json"
        made = json.loads(made_path.read_text()) if made_path.exists() else []
        if [f"kubectl {args[1]}", args[2]] in made:
            output = [a for a in args if a.startswith("jsonpath=")]
            if "-o" in args and args[args.index("-o") + 1].startswith("jsonpath="):
                output = [args[args.index("-o") + 1]]
            if output:
                key = output[0].removeprefix("jsonpath={.data.").removesuffix("}")
                value = json.loads((state / "secrets.json").read_text())[args[2]][key]
                print(base64.b64encode(value.encode()).decode(), end="")
            else:
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
            kept = state / "secrets.json"
            secrets = json.loads(kept.read_text()) if kept.exists() else {}
            literals = [a.split("=", 1)[1] for a in args if a.startswith("--from-literal=")]
            secrets[names[2]] = dict(literal.split("=", 1) for literal in literals)
            kept.write_text(json.dumps(secrets))
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
    if args[:2] == ["builds", "submit"]:  # Cloud Build: the config's image, pushed
        config = Path(args[args.index("--config") + 1]).read_bytes()
        given = dict(
            pair.split("=", 1) for pair in args[args.index("--substitutions") + 1].split(",")
        )
        digest = hashlib.sha256(config + json.dumps(given, sort_keys=True).encode()).hexdigest()
        images = state / "images.json"
        pushed = json.loads(images.read_text()) if images.exists() else {}
        pushed[given["_IMAGE"]] = f"sha256:{digest}"
        images.write_text(json.dumps(pushed))
        return 0
    if args[:4] == ["artifacts", "docker", "images", "describe"]:
        print(json.loads((state / "images.json").read_text())[args[4]])
        return 0
    if args[:3] == ["billing", "projects", "describe"]:
        recorded = state / "billing.txt"
        print(recorded.read_text().strip() if recorded.exists() else "True")
        return 0
    if args[:2] == ["projects", "describe"]:
        print(PROJECT_NUMBER)
        return 0
    made_path = state / "made.json"
    made = json.loads(made_path.read_text()) if made_path.exists() else []
    found = resource(args)
    if args[:2] == ["container", "node-pools"] and found is not None:
        pools = state / "node_pools.json"
        settings = json.loads(pools.read_text()) if pools.exists() else {}
        if "create" in args or "update" in args:
            pool = settings.setdefault(found[1], {})
            pool.update(
                {flag: args[args.index(flag) + 1] for flag in POOL_SETTINGS if flag in args}
            )
            if "--spot" in args:
                pool["--spot"] = "True"
            pools.write_text(json.dumps(settings))
        if "describe" in args and list(found) in made and "--format" in args:
            pool = settings[found[1]]
            print(
                "\t".join(
                    [pool["--machine-type"], pool["--disk-size"], pool.get("--spot", "False"),
                     pool["--max-nodes"]]
                )
            )  # fmt: skip
            return 0
    if found is not None and "describe" in args:
        if list(found) in made:
            print(f"name: {found[1]}")
            return 0
        print(f"ERROR: (gcloud) NOT_FOUND: {found[1]}", file=sys.stderr)
        return 1
    if found is not None and "create" in args:
        made.append(list(found))
        made_path.write_text(json.dumps(made))
        if found[0] == "storage buckets" and os.environ.get("STORAGE_EMULATOR_HOST"):
            create_bucket(os.environ["STORAGE_EMULATOR_HOST"], found[1].removeprefix("gs://"))
    if found is not None and ("delete" in args or args[:2] == ["storage", "rm"]):
        if list(found) not in made:
            print(f"ERROR: (gcloud) NOT_FOUND: {found[1]}", file=sys.stderr)
            return 1
        made.remove(list(found))
        if found[0] == "container clusters":  # and what ran in it
            made = [entry for entry in made if not entry[0].startswith("kubectl ")]
        made_path.write_text(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
