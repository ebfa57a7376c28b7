"""Command line: add [--priority N] TITLE, list, done N."""
import argparse
import sys

from . import storage
from .model import NORMAL, Item


def build_parser():
    parser = argparse.ArgumentParser(prog="todo")
    parser.add_argument("--file", default="todo.json", help="where the list is kept")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add an item")
    add.add_argument("--priority", type=int, choices=(1, 2, 3), default=NORMAL,
                     help="1 high, 2 normal (default), 3 low")
    add.add_argument("title")
    sub.add_parser("list", help="show the items, highest priority first")
    done = sub.add_parser("done", help="mark item N (as numbered by list) done")
    done.add_argument("number", type=int)
    return parser


def format_item(number, item):
    return "%d. [%s] P%d %s" % (number, "x" if item.done else " ", item.priority, item.title)


def main(argv=None, out=sys.stdout):
    args = build_parser().parse_args(argv)
    items = storage.load(args.file)
    if args.command == "add":
        items.append(Item(args.title, priority=args.priority))
        storage.save(items, args.file)
    elif args.command == "list":
        for number, item in storage.by_priority(items):
            print(format_item(number, item), file=out)
    elif args.command == "done":
        items[args.number - 1].done = True
        storage.save(items, args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
