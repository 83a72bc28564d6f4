"""Validate Grafana dashboard JSON files against the schema generated from @grafana/schema.

    .cache/deploy/venv/bin/python deploy/tools/check_dashboard.py SCHEMA DASHBOARD...

The schema comes from the Dashboard TypeScript type of @grafana/schema by
ts-json-schema-generator (deploy/deploy.mk). Prints every error; exits 1 on any.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonschema import Draft7Validator


def main(argv: list[str]) -> int:
    schema = json.loads(Path(argv[0]).read_text())
    Draft7Validator.check_schema(schema)
    validator = Draft7Validator(schema)
    errors = 0
    for name in argv[1:]:
        for error in validator.iter_errors(json.loads(Path(name).read_text())):
            errors += 1
            print(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
    print(f"{len(argv) - 1} dashboard(s), {errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
