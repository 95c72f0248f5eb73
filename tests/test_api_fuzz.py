"""Schemathesis against the live API with an admin key: generated valid and invalid requests to
every operation in /openapi.json, bounded in time, must cause no server error and no response
that contradicts the schema (status codes, content types, bodies, headers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import Server

SCHEMATHESIS = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
SECONDS = int(os.environ.get("LOOKALIKE_FUZZ_SECONDS", "60"))


@pytest.mark.skipif(SCHEMATHESIS is None, reason="needs schemathesis (pip install 'lookalike[test]')")
def test_generated_requests_cause_no_server_error_and_no_schema_violation(store_copy, tmp_path):
    srv = Server(store_copy, {"LOOKALIKE_INGEST_ROOTS": str(tmp_path)}, public_read=False)
    try:
        result = subprocess.run(
            [str(SCHEMATHESIS), "run", srv.url + "/openapi.json", "-H", f"Authorization: Bearer {srv.key}", "--checks", CHECKS,
             "--phases", "examples,fuzzing,stateful", "-n", "10", "--seed", "11", "--max-time", str(SECONDS), "--workers", "2",
             "--no-color", "--generation-database", "none", "--suppress-health-check", "all", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=SECONDS + 240, cwd=tmp_path)
        summary = result.stdout[-4000:]
        assert result.returncode == 0, summary
        assert " passed" in summary and "failures" not in summary.lower().split("summary")[-1], summary
    finally:
        srv.stop()
