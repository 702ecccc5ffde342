"""Progress of long commands: a bar on a terminal, a line every few seconds otherwise."""

import io

from click.testing import CliRunner

from cdc_cache.app.settings import ENV_PREFIX, WorkerSettings
from cdc_cache.cli import main
from cdc_cache.cli.progress import Progress


def test_without_a_terminal_a_line_comes_first_then_at_most_every_interval_and_at_the_end():
    out, now = io.StringIO(), [0.0]
    progress = Progress("replaying", stream=out, terminal=False, every_s=5, clock=lambda: now[0])
    for done in range(1, 11):
        now[0] = done  # one second per step
        progress(done, 10, f"entry {done}")
    progress.close()
    assert out.getvalue().splitlines() == [
        "replaying: 1/10 (10 %) entry 1",
        "replaying: 6/10 (60 %) entry 6",
        "replaying: 10/10 (100 %) entry 10",
    ]


def test_on_a_terminal_one_bar_is_redrawn_in_place_and_ended_by_close():
    out = io.StringIO()
    with Progress("verify", stream=out, terminal=True) as progress:
        progress(0, 4, "shop.stock: keys compared")
        progress(2, 4, "shop.stock: keys compared")
        progress(4, 4, "done")
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert f"[{'#' * 15}{'-' * 15}] 2/4 (50 %)" in text
    # a shorter redraw pads over the longer one before it
    last = text.split("\r")[-1].rstrip("\n")
    assert last.startswith(f"verify [{'#' * 30}] 4/4 (100 %) done")
    assert len(last) == len(text.split("\r")[-2])


def test_unknown_totals_show_counts_alone():
    out = io.StringIO()
    Progress("reading", stream=out, terminal=False)(0, 0, "rows")
    assert out.getvalue() == "reading: 0 rows\n"


def test_run_help_lists_every_setting_with_its_environment_variable_and_the_exit_codes():
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = result.output
    for name in WorkerSettings.model_fields:
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert f"{ENV_PREFIX}{name.upper()};" in line, line
    assert "CDC_CACHE_BATCH_SIZE; messages per poll per partition [250]" in text
    assert "CDC_CACHE_RULES; the rules file [required]" in text
    # the librdkafka maps show the defaults the clients apply beneath them, not "unset"
    assert "'fetch.wait.max.ms': '100'" in text and "'acks': 'all'" in text
    codes = text.split("Exit codes:")[1].split()
    assert [c for c in codes if c.isdigit()][:4] == ["0", "1", "2", "3"]
