#!/usr/bin/env python3
"""Lists every test ctest skipped, with the reason the test printed, from ctest's JUnit file.
With --strict (CI), a skip for any reason other than missing hardware (a GPU, an instruction set)
fails: a missing model, package or data set is an install step that did not run, not a pass.
Usage: report-skips.py JUNIT_XML [--strict]"""
import re
import sys
import xml.etree.ElementTree as ET

HARDWARE = re.compile(r"\b(GPU|CUDA|device|instruction set|AVX|AMX|VNNI|ISA)\b", re.IGNORECASE)


def skip_reason(case):
    out = (case.findtext("system-out") or "").strip().splitlines()
    # The test's own SKIP line (ctest drivers print "SKIP: ...", GoogleTest "... Skipped\n<reason>").
    for i, line in enumerate(out):
        if line.startswith("SKIP:"):
            return line[5:].strip()
        if "Skipped" in line and i + 1 < len(out) and out[i + 1].strip():
            return out[i + 1].strip()
    return out[-1] if out else "(no reason printed)"


def main():
    strict = "--strict" in sys.argv[2:]
    skipped = []
    for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
        if case.get("status") == "notrun" or case.find("skipped") is not None:
            skipped.append((case.get("name"), skip_reason(case)))
    if not skipped:
        print("report-skips: no test was skipped")
        return 0
    print(f"report-skips: {len(skipped)} test(s) skipped:")
    hidden = 0
    for name, reason in skipped:
        hardware = bool(HARDWARE.search(reason))
        hidden += not hardware
        print(f"  {name}: {reason}" + ("" if hardware else "   <- not a hardware skip"))
    if strict and hidden:
        print(f"report-skips: {hidden} skip(s) for a reason other than missing hardware; in CI that is a failure")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
