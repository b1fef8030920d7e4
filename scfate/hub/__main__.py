"""``python -m scfate.hub {collect,manifest,verify,push,pull,resolve} ...``: the Hub release of the artifact tree.

Order for a release: train/evaluate runs into DIR -> collect DIR -> manifest DIR -> verify DIR -> push DIR --repo R.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scfate.hub", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy every run's eval JSON to results/table1_inputs/, write results/table1.md")
    c.add_argument("dir")
    c.add_argument("--reproduce", default=None, help="REPRODUCE.md to copy into the tree (default: the project's)")
    sub.add_parser("manifest", help="write DIR/MANIFEST.json (runs, hyperparameters, metrics, sha256, commands)") \
        .add_argument("dir")
    sub.add_parser("verify", help="check DIR against its MANIFEST.json and Table 1 against its inputs") \
        .add_argument("dir")
    s = sub.add_parser("push", help="verify, stage (with a generated README.md card) and upload DIR to the Hub")
    s.add_argument("dir")
    s.add_argument("--repo", required=True, help="OWNER/NAME on the Hugging Face Hub")
    s.add_argument("--private", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="stop after staging; print the staged folder")
    s.add_argument("--staging", default=None, help="staging folder (default: DIR/.hub-staging)")
    s.add_argument("--message", default=None, help="commit message")
    g = sub.add_parser("pull", help="download (part of) a Hub repo: snapshot_download")
    g.add_argument("repo", help="OWNER/NAME")
    g.add_argument("--include", action="append", default=None, help="glob, repeatable: 'flow_heads/k562/base/*'")
    g.add_argument("--revision", default=None)
    g.add_argument("--local-dir", default=None, help="a plain folder instead of the Hub cache")
    r = sub.add_parser("resolve", help="print the local path of a checkpoint reference (fetching hf:// refs)")
    r.add_argument("ref", help="a file, a run folder or hf://OWNER/REPO[@REVISION]/SUBPATH")
    r.add_argument("--filename", default="flow_best.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    from scfate.errors import ScfateError

    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ScfateError as exc:  # DataError and CheckpointError (an unreadable or unsafe checkpoint) alike
        print(f"scfate error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from scfate.hub import tree
    from scfate.hub.manifest import verify, write_manifest

    if args.command == "collect":
        sources = tree.collect(args.dir, **({"reproduce": args.reproduce} if args.reproduce else {}))
        print(f"{len(sources)} eval JSON(s) -> {args.dir}/{tree.INPUTS}/; table written to {args.dir}/{tree.TABLE1}")
        print((tree.check_dir(args.dir) / tree.TABLE1).read_text())
    elif args.command == "manifest":
        path = write_manifest(args.dir)
        print(f"manifest written to {path}")
    elif args.command == "verify":
        problems = verify(args.dir)
        if problems:
            print(f"verify FAILED: {len(problems)} problem(s) in {args.dir}:", file=sys.stderr)
            print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            return 1
        print(f"verify OK: every file of {args.dir} matches MANIFEST.json and Table 1 regenerates from its inputs")
    elif args.command == "push":
        from scfate.hub.publish import push

        staged, info = push(args.dir, args.repo, args.private, args.dry_run, args.staging, args.message)
        print(f"staged folder: {staged}")
        print("dry run: nothing uploaded" if args.dry_run else f"uploaded to https://huggingface.co/{args.repo} ({info})")
    elif args.command == "pull":
        from scfate.hub.publish import pull

        print(pull(args.repo, args.include, args.revision, args.local_dir))
    elif args.command == "resolve":
        from scfate.hub import resolve_checkpoint

        print(resolve_checkpoint(args.ref, args.filename))
    return 0


if __name__ == "__main__":
    sys.exit(main())
