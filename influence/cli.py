"""Command-line interface: ``influence <command>`` / ``python -m influence``."""
from __future__ import print_function

import argparse
import platform
import sys


def _version_of(modname):
    try:
        mod = __import__(modname)
    except Exception as exc:  # ImportError, or a broken native library
        return None, "{}: {}".format(type(exc).__name__, exc)
    return getattr(mod, "__version__", "unknown"), None


def cmd_info(args):
    from influence._version import __version__

    print("influence  {}".format(__version__))
    print("python     {} ({})".format(platform.python_version(), sys.executable))
    for name in ("numpy", "scipy"):
        ver, err = _version_of(name)
        print("{:<10} {}".format(name, ver if err is None else "not available ({})".format(err)))
    ver, err = _version_of("cntk")
    if err is None:
        print("cntk       {}".format(ver))
    else:
        print("cntk       not available ({})".format(err))
    return 0


def build_parser():
    from influence._version import __version__

    parser = argparse.ArgumentParser(
        prog="influence",
        description="Influence functions on CNTK models.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="show versions of influence, python, numpy, scipy, cntk")
    p_info.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
