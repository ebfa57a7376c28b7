"""Print a greeting."""
import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(prog="greet.py", description="Print a greeting.")
    parser.add_argument("--name", default="world", help="who to greet (default: world)")
    parser.add_argument("--shout", action="store_true", help="print the greeting in capitals")
    parser.add_argument("--times", type=int, default=1, help="how many times to print it (default: 1)")
    return parser


def greeting(name, shout=False):
    text = "Hello, %s!" % name
    return text.upper() if shout else text


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.times < 1:
        print("greet.py: --times must be at least 1", file=sys.stderr)
        return 2
    for _ in range(args.times):
        print(greeting(args.name, args.shout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
