#!/usr/bin/env python3
"""The end of scripts/test.sh: where the run's time went, and what failed.

Reads the phases scripts/test.sh timed (NAME=SECONDS arguments) and nextest's JUnit report,
then prints one table (each phase and the total), the number of tests run (checked against
the floor in scripts/test-count-floor: the count must never go down unnoticed), the ten
slowest tests, and last, so that they are the last lines of a CI log, the failed tests.

Exit status: 0, or 1 when the report shows a failed test or fewer tests than the floor.
"""

import argparse
import os
import sys
import xml.etree.ElementTree as ElementTree


def duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60:d}m {seconds % 60:02d}s"


def read_junit(path):
    """Returns [(name, seconds, failed)] for every test case in a nextest JUnit file."""
    cases = []
    root = ElementTree.parse(path).getroot()
    for case in root.iter("testcase"):
        binary = case.get("classname", "")
        name = f"{binary} {case.get('name', '')}".strip()
        failed = case.find("failure") is not None or case.find("error") is not None
        cases.append((name, float(case.get("time", "0") or 0), failed))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phases", nargs="*", help="NAME=SECONDS, in the order they ran")
    parser.add_argument(
        "--junit",
        action="append",
        default=[],
        help="a nextest JUnit report (repeatable: the run as this user, the run as root)",
    )
    parser.add_argument("--floor", help="a file holding the lowest acceptable test count")
    args = parser.parse_args()

    rows = []
    for phase in args.phases:
        name, _, seconds = phase.rpartition("=")
        rows.append((name, float(seconds)))
    width = max([len(name) for name, _ in rows] + [len("total")])
    print()
    print("==> where the time went")
    print(f"  {'phase':<{width}}  time")
    for name, seconds in rows:
        print(f"  {name:<{width}}  {duration(seconds)}")
    print(f"  {'total':<{width}}  {duration(sum(s for _, s in rows))}")

    status = 0
    reports = [path for path in args.junit if os.path.isfile(path)]
    if not reports:
        print("\nno test report (the tests did not run)")
        return 1 if args.junit else 0
    cases = [case for path in reports for case in read_junit(path)]
    failed = [name for name, _, is_failed in cases if is_failed]
    floor = None
    if args.floor and os.path.isfile(args.floor):
        with open(args.floor, encoding="utf-8") as file:
            floor = int(file.read().split()[0])
    floor_note = f"; floor {floor}" if floor is not None else ""
    print(
        f"\ntests run: {len(cases)} ({len(cases) - len(failed)} passed, "
        f"{len(failed)} failed{floor_note})"
    )
    slowest = sorted(cases, key=lambda case: case[1], reverse=True)[:10]
    print("ten slowest tests:")
    for name, seconds, _ in slowest:
        print(f"  {duration(seconds)}  {name}")
    if floor is not None and len(cases) < floor:
        print(
            f"\nerror: {len(cases)} tests ran, fewer than the {floor} in {args.floor}: "
            "a test was lost (if it was removed on purpose, lower the floor in the same commit)"
        )
        status = 1
    if failed:
        print(f"\nFAILED: {len(failed)} test(s):")
        for name in failed:
            print(f"  {name}")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
