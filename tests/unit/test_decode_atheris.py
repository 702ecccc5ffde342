"""Coverage-guided fuzzing (atheris) of decode, plan and the dead-letter path.

Seeded with recorded real events and deeply nested variants of them.

Complements the hypothesis properties in test_envelope_fuzz.py: libFuzzer mutates the
recorded messages byte by byte, guided by which branches of the decoder they reach.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fuzz.decode_fuzz import RECORDED, encode, record_of, seeds, write_seeds

ROOT = Path(__file__).resolve().parents[2]
RUNS = 30_000


def test_seeds_stand_for_their_records_and_reach_the_parser_limit():
    deep = seeds()[len(RECORDED) :]
    assert max(len(encode(record)) for record in deep) <= 4096  # -max_len below
    assert sum(b"[" * 1024 in (r.value or b"") for r in deep) >= 4
    for record in seeds():
        back = record_of(encode(record))
        assert (back.topic, back.key, back.value) == (record.topic, record.key, record.value)


def test_any_mutation_of_recorded_events_decodes_or_is_typed_poison(tmp_path):
    corpus = tmp_path / "corpus"
    assert write_seeds(corpus) == len(seeds()) > len(RECORDED)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.decode_fuzz",
            str(corpus),
            f"-runs={RUNS}",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0, f"the fuzzer found an input that escapes:\n{report}"
    assert f"Done {RUNS} runs" in done.stderr
