"""`kubetune-trainer STAGE --config FILE`. The stages arrive with the trainer issue; `schema` works now."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-trainer")
    parser.add_argument("stage", choices=["schema"])
    parser.parse_args(argv)
    from kubetune.api.finetunejob import FineTuneJobSpec

    json.dump(FineTuneJobSpec.model_json_schema(by_alias=True), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
