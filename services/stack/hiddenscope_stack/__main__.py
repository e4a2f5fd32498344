"""``python -m hiddenscope_stack up``: the whole product on this machine without Docker.

Starts every service of ``deploy/docker-compose.yml`` as a local process (see
:mod:`hiddenscope_stack.runner`), loads the demo dataset through the gateway if it is not there,
prints the URLs and runs until Ctrl-C (or SIGTERM), then stops everything.

``python -m hiddenscope_stack config`` prints the local plan (commands, ports, env) and exits.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from hiddenscope_stack.demo import default_demo_dir, ensure_demo
from hiddenscope_stack.runner import (
    Stack,
    StackError,
    default_compose_path,
    repo_root,
    signals_raise_keyboard_interrupt,
)


def _scale(values: list[str]) -> dict[str, int]:
    out = {}
    for v in values:
        name, _, n = v.partition("=")
        if not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--scale wants SERVICE=N (N >= 1), got {v!r}")
        out[name] = int(n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hiddenscope_stack", description=__doc__)
    p.add_argument("action", nargs="?", default="up", choices=["up", "config"])
    p.add_argument("--compose", type=Path, default=default_compose_path())
    p.add_argument("--env-file", type=Path, default=None, help="default: .env beside the file")
    p.add_argument("--state-dir", type=Path, default=repo_root() / "data" / "stack",
                   help="volumes and logs (default data/stack)")  # fmt: skip
    p.add_argument("--free-ports", action="store_true", help="never use the configured ports")
    p.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo dataset")
    p.add_argument("--demo-dir", type=Path, default=default_demo_dir())
    p.add_argument("services", nargs="*", help="only these services (and their dependencies)")
    args = p.parse_args(argv)
    stack = Stack(
        compose_path=args.compose,
        state_dir=args.state_dir,
        env_file=args.env_file,
        free_ports=args.free_ports,
        scale=_scale(args.scale),
        only=args.services or None,
    )
    if args.action == "config":
        for svc in stack.plan():
            print(f"{svc.id}:  port {svc.port}  cwd {svc.cwd}\n  $ {shlex.join(svc.argv)}")
            for k, v in sorted(svc.env.items()):
                print(f"    {k}={v}")
        for name, why in stack.skipped.items():
            print(f"{name}: skipped ({why})")
        return 0
    with signals_raise_keyboard_interrupt():
        try:
            stack.up()
            urls = stack.urls
            if "gateway" in urls and not args.no_demo:
                name, uploaded = ensure_demo(urls["gateway"], args.demo_dir)
                print(f"demo dataset {name!r} {'loaded' if uploaded else 'already present'}")
            print("\nHiddenScope is running:")
            if "ui" in urls:
                print(f"  UI        {urls['ui']}")
            if "gateway" in urls:
                print(f"  API       {urls['gateway']}/v1   (GET {urls['gateway']}/ lists the APIs)")
            for name, url in sorted(urls.items()):
                if name not in ("ui", "gateway"):
                    print(f"  {name:<9} {url}")
            print(f"  logs      {stack.state_dir / 'logs'}\nCtrl-C stops everything.", flush=True)
            while True:
                for svc in stack.dead():
                    assert svc.process is not None
                    print(f"warning: {svc.id} exited; its log:\n{svc.process.log(2000)}")
                    stack.running.remove(svc)
                time.sleep(1.0)
        except StackError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
        finally:
            stack.down()
            print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
