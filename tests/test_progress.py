"""Progress of long jobs: rich bars on a terminal, plain lines in a log (a console that is not a terminal)."""

import io

from rich.console import Console

from daisy.progress import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def logged(run, **options) -> list[str]:
    """The lines `run(bar, clock)` leaves on a console writing to a file."""
    out, clock = io.StringIO(), Clock()
    with progress(console=Console(file=out, width=40), get_time=clock, **options) as bar:
        run(bar, clock)
    return out.getvalue().splitlines()


def test_a_log_gets_a_line_at_start_every_tenth_and_at_the_end():
    def run(bar, clock):
        task = bar.add_task("extracting clean-train with a long description", total=50)
        for _ in range(50):
            clock.now += 1.0
            bar.advance(task)

    lines = logged(run)
    assert lines[0] == "extracting clean-train with a long description: 0/50 (0 %)"  # not wrapped at 40 columns
    assert [line.split(": ")[1].split(",")[0] for line in lines[1:]] == [
        f"{5 * k}/50 ({10 * k} %)" for k in range(1, 11)
    ]
    assert lines[1].endswith("0:00:05 elapsed, 0:00:45 left") and lines[-1].endswith("done in 0:00:50")


def test_lines_are_spaced_in_time_and_slow_tasks_report_every_so_often():
    def fast(bar, clock):  # 1000 steps in 1 s: the 10 % lines would only flood the log
        task = bar.add_task("fast", total=1000)
        for _ in range(1000):
            clock.now += 0.001
            bar.advance(task)

    assert [line.split(",")[0] for line in logged(fast)] == ["fast: 0/1000 (0 %)", "fast: 1000/1000 (100 %)"]

    def slow(bar, clock):  # 1 % per 20 s: a line every 60 s, and at a tenth
        task = bar.add_task("slow", total=100)
        for _ in range(10):
            clock.now += 20.0
            bar.advance(task)

    assert [line.split(" (")[0] for line in logged(slow)] == [
        "slow: 0/100",
        "slow: 3/100",
        "slow: 6/100",
        "slow: 9/100",
        "slow: 10/100",  # a tenth done
    ]


def test_a_reset_or_renamed_task_starts_again_and_hidden_tasks_stay_quiet():
    def run(bar, clock):
        steps = bar.add_task("", total=1, visible=False)
        bar.advance(steps)
        bar.reset(steps, total=4, description="probe sid / daisy", visible=True)
        bar.update(steps, description="probe sid / full")
        bar.update(steps, visible=False)
        bar.advance(steps, 4)

    assert logged(run) == ["probe sid / daisy: 0/4 (0 %)", "probe sid / full: 0/4 (0 %)"]


def test_a_terminal_shows_the_bar_and_a_disabled_progress_prints_nothing():
    def run(bar, clock):
        task = bar.add_task("work", total=4)
        bar.advance(task, 4)

    out = io.StringIO()
    with progress(console=Console(file=out, force_terminal=True, width=80)) as bar:
        run(bar, Clock())
    assert "work" in out.getvalue() and "4/4" in out.getvalue() and "(100 %)" not in out.getvalue()
    assert logged(run, disable=True) == []
