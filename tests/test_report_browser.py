"""The report page in a real browser (issue 27): headless Chromium opens the file, its
script writes the run's figures into the page, and the DOM it leaves says what a reader
sees; a screenshot shows bars in each outcome's colour; zoom, pan, a click and lanes
that scroll work on synthetic pointer events.

The run drawn here is made by hand, so every figure is known: four processes on two
hosts (worker-2 of box-a replaced after it was killed), a lane of tasks no process ran,
and one task of each way to end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.models import TaskError, TaskResult, WorkerInfo
from tests.browser import Elements, colours, dump_dom, rgb, screenshot
from tests.helpers import run_fanout

T0 = 1_800_000_000.0
OK, RAISED, TIMEOUT, KILLED = "#3b8f5e", "#d62f3c", "#f0a020", "#8e44ad"  # report.js's

# (index, host, worker, pid, start, end, error): the run, lane by lane.
# fmt: off
RUN: list[tuple[int, str, str, int, float, float, TaskError | None]] = [
    (0, "box-a", "worker-1", 101, 0.0, 0.5, None),
    (1, "box-a", "worker-1", 101, 0.5, 1.0, None),  # then idle, 1.0 to 2.5 s
    (2, "box-a", "worker-1", 101, 2.5, 3.0, None),
    (3, "box-a", "worker-1", 101, 3.0, 3.28, None),
    (20, "box-a", "worker-1", 101, 3.28, 3.5, TaskError("ValueError", "bad photo")),
    (4, "box-a", "worker-1", 101, 3.5, 6.0, None),  # the last to start: at 3.5 s
    (5, "box-a", "worker-2", 102, 0.0, 1.0, None),
    (6, "box-a", "worker-2", 102, 1.0, 2.0, None),
    (22, "box-a", "worker-2", 102, 2.0, 2.2,
     TaskError("WorkerLost", "worker-2 (pid 102) died while running task 22: killed by"
               " signal SIGKILL")),
    (8, "box-a", "worker-2", 122, 2.3, 2.5, None),
    (9, "box-a", "worker-2", 122, 2.5, 3.0, None),
    (21, "box-a", "worker-2", 122, 3.0, 5.0,
     TaskError("TaskTimeout", "task 21 ran longer than its timeout of 2 s")),
    (7, "box-b", "worker-1", 201, 0.0, 2.8, None),  # the slowest
    *((i, "box-b", "worker-1", 201, 2.8 + (i - 10) * 0.02, 2.82 + (i - 10) * 0.02, None)
      for i in range(10, 20)),
    (23, "box-a", "(not run)", 0, 5.5, 5.5, TaskError("Cancelled", "the run was cancelled")),
    (24, "box-a", "(not run)", 0, 0.1, 0.1,
     TaskError("SerializationError", "input 24 cannot be pickled")),
]
# fmt: on


def results() -> list[TaskResult]:
    made = []
    for index, host, worker, pid, start, end, error in RUN:
        info = WorkerInfo(worker, pid, 1, host, "local")
        attempts = 0 if worker == "(not run)" else 1
        value = index * index if error is None else None
        made.append(TaskResult(index, error is None, value, error, info, attempts, T0 + start,
                               T0 + end, end - start))  # fmt: skip
    return sorted(made, key=lambda r: r.index)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "run.html"
    inputs = [f"photo-{i}.jpg" for i in range(25)]
    return fanout.report(results(), path, inputs=inputs, title="shop.images:resize")


def test_the_page_shows_the_runs_figures(report: Path) -> None:
    page = Elements(dump_dom(report))
    body = next(attrs for tag, attrs in page.all if tag == "body")
    assert body["data-lanes"] == "5"  # four processes and the tasks no process ran
    assert float(body["data-ready-ms"]) > 0
    shown = {name: page.text(f"stat-{name}") for name in ("tasks", "ok", "failed",
             "cancelled", "wall", "workers", "hosts", "busy", "waited", "tail")}  # fmt: skip
    assert shown == {"tasks": "25", "ok": "20", "failed": "4", "cancelled": "1",
                     "wall": "6 s", "workers": "4", "hosts": "2", "busy": "52%",
                     "waited": "1.5 s", "tail": "2.5 s"}  # fmt: skip
    by_cause = {a["data-cause"]: int(a["data-count"]) for tag, a in page.all if "data-cause" in a}
    assert by_cause == {"ok": 20, "raised": 1, "timeout": 1, "killed": 1, "cancelled": 1,
                        "not-run": 1}  # fmt: skip
    assert page.text("title") == "fanout report: shop.images:resize"


def test_the_tables_show_each_workers_share_the_slowest_tasks_and_the_idle_gaps(
    report: Path,
) -> None:
    dom = dump_dom(report)
    rows = re.findall(r'<tr data-lane="([^"]+)">(.*?)</tr>', dom)
    cells = {lane: [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>",
             row)] for lane, row in rows}  # fmt: skip
    assert list(cells) == ["box-a · worker-1 · 101", "box-a · worker-2 · 102",
                           "box-a · worker-2 · 122", "box-b · worker-1 · 201"]  # fmt: skip
    one = cells["box-a · worker-1 · 101"]
    assert one[1:3] == ["6", "4.5 s"]  # tasks, busy
    assert one[3] == "75%"
    assert one[4:] == ["1.5 s", "1.5 s"]  # idle between tasks, all of it while tasks waited
    slowest = re.findall(r'<tr data-index="(\d+)"><td class="n">\d+</td><td class="n">([^<]+)',
                         dom)  # fmt: skip
    assert slowest[:3] == [("7", "2.8 s"), ("4", "2.5 s"), ("21", "2 s")]
    assert ("3", "280 ms") in slowest  # 0.28 s: "28 ms" before its trailing zero was kept
    gaps = Elements(dom).text("gaps")
    assert gaps.startswith("processfromidlebox-a · worker-1 · 1011 s1.5 s"), gaps


def test_a_link_to_a_task_opens_its_details(report: Path) -> None:
    page = Elements(dump_dom(report, "#task=21"))
    assert page.by_id["pinned"]["data-index"] == "21"
    details = page.text("pinned")
    for said in (
        "timed out",
        "TaskTimeout: task 21 ran longer than its timeout of 2 s",
        "'photo-21.jpg'",
        "box-a · worker-2 · 122",
        "2 s, from 3 s to 5 s",
    ):
        assert said in details, details


def test_the_screenshot_shows_bars_in_each_outcomes_colour(report: Path, tmp_path: Path) -> None:
    found = colours(screenshot(report, tmp_path / "shot.png"))
    assert len(found) > 30, len(found)  # text, bars, lines: not a blank page
    for colour in (OK, RAISED, TIMEOUT, KILLED):
        assert rgb(colour) in found, colour


PROBE = """<script>
(function () {
  const out = {};
  const plot = document.getElementById("plot"), axis = document.getElementById("axis");
  const range = () => document.getElementById("range").textContent;
  const at = (el, x, y) => ({ clientX: el.getBoundingClientRect().left + x,
    clientY: el.getBoundingClientRect().top + y, bubbles: true, cancelable: true });
  const width = plot.getBoundingClientRect().width, labels = 250, right = 14;
  const xOf = (t) => labels + ((t + 0.06) / 6.12) * (width - labels - right);
  out.full = range();
  plot.dispatchEvent(new WheelEvent("wheel", { ...at(plot, xOf(3), 10), deltaY: -700 }));
  out.zoomed = range();
  plot.dispatchEvent(new MouseEvent("dblclick", at(plot, xOf(3), 10)));
  out.reset = range();
  axis.dispatchEvent(new MouseEvent("mousedown", at(axis, xOf(1), 5)));
  window.dispatchEvent(new MouseEvent("mousemove", at(axis, xOf(2), 5)));
  window.dispatchEvent(new MouseEvent("mouseup", at(axis, xOf(2), 5)));
  out.selected = range();
  document.getElementById("reset").click();
  plot.dispatchEvent(new WheelEvent("wheel", { ...at(plot, xOf(3), 10), deltaY: -700 }));
  out.unpanned = range();
  plot.dispatchEvent(new MouseEvent("mousedown", at(plot, xOf(3), 10)));
  window.dispatchEvent(new MouseEvent("mousemove", at(plot, xOf(2), 10)));
  window.dispatchEvent(new MouseEvent("mouseup", at(plot, xOf(2), 10)));
  out.panned = range();
  document.getElementById("reset").click();
  plot.dispatchEvent(new MouseEvent("mousedown", at(plot, xOf(4.75), 12)));
  window.dispatchEvent(new MouseEvent("mouseup", at(plot, xOf(4.75), 12)));
  out.clicked = document.getElementById("pinned").dataset.index;
  plot.dispatchEvent(new MouseEvent("mousedown", at(plot, xOf(2.1), 24 + 12)));
  window.dispatchEvent(new MouseEvent("mouseup", at(plot, xOf(2.1), 24 + 12)));
  out.second = document.getElementById("pinned").dataset.index;
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
})();
</script>"""


def probed(report: Path, tmp_path: Path, probe: str) -> dict[str, Any]:
    """What ``probe`` (a script run after the page's own) found, from the DOM."""
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    found: dict[str, Any] = json.loads(Elements(dump_dom(page)).text("probe"))
    return found


def shown_span(text: str) -> tuple[float, float]:
    """The span of time the toolbar says is in view, in seconds."""
    found = re.fullmatch(r"showing (\S+) (m?s) to (\S+) (m?s) of 6 s", text)
    assert found, text
    a, unit_a, b, unit_b = found.groups()
    return float(a) / (1000 if unit_a == "ms" else 1), float(b) / (1000 if unit_b == "ms" else 1)


def test_wheel_zooms_drag_pans_a_span_of_the_axis_zooms_and_a_click_pins_a_task(
    report: Path, tmp_path: Path
) -> None:
    found = probed(report, tmp_path, PROBE)
    assert found["full"] == "showing 0 s to 6 s of 6 s"
    assert found["zoomed"] != found["full"]
    assert found["reset"] == found["full"]
    start, end = shown_span(found["selected"])
    assert abs(start - 1) < 0.05
    assert abs(end - 2) < 0.05
    (a, b), (c, d) = shown_span(found["unpanned"]), shown_span(found["panned"])
    assert c > a + 0.2  # dragged to the left: later times come into view
    assert abs((d - c) - (b - a)) < 0.02  # as wide as before
    assert found["clicked"] == "4"  # box-a · worker-1 runs task 4 from 3.5 to 6 s
    assert found["second"] == "22"  # the next lane, box-a · worker-2 · 102: killed at 2 s


MANY_LANES_PROBE = """<script>
(function () {
  const plot = document.getElementById("plot"), box = document.getElementById("lanes");
  box.scrollTop = box.scrollHeight;
  box.dispatchEvent(new Event("scroll"));
  const r = plot.getBoundingClientRect();
  const y = r.height - 5;
  plot.dispatchEvent(new MouseEvent("mousedown", { clientX: r.left + r.width / 2,
    clientY: r.top + y, bubbles: true }));
  window.dispatchEvent(new MouseEvent("mouseup", { clientX: r.left + r.width / 2,
    clientY: r.top + y, bubbles: true }));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({ scrolled: box.scrollTop, height: box.clientHeight,
    pinned: document.getElementById("pinned").dataset.index });
  document.body.append(pre);
})();
</script>"""


def test_a_thousand_lanes_scroll_and_the_last_one_can_be_clicked(tmp_path: Path) -> None:
    many = [TaskResult(i, True, i, None, WorkerInfo(f"w-{i:04d}", 1000 + i, 1, "big", "rq"),
                       1, T0, T0 + 1.0, 1.0) for i in range(1000)]  # fmt: skip
    report = fanout.report(many, tmp_path / "many.html")
    found = probed(report, tmp_path, MANY_LANES_PROBE)
    assert found["scrolled"] > 0
    assert found["height"] < 1000 * 11  # a viewport on the lanes, not 1,000 of them at once
    assert found["pinned"] == "999"


@pytest.mark.slow
def test_a_real_run_with_a_failed_a_timed_out_and_a_killed_task(tmp_path: Path) -> None:
    out = tmp_path / "chore.html"
    ran = run_fanout("run", "fanout.examples:chore", "--range", "24", "--workers", "3",
                     "--timeout", "2", "--json", "--report", str(out))  # fmt: skip
    assert ran.returncode == 1, ran.stderr
    page = Elements(dump_dom(out))
    by_cause = {a["data-cause"]: int(a["data-count"]) for tag, a in page.all if "data-cause" in a}
    assert by_cause == {"ok": 21, "raised": 1, "timeout": 1, "killed": 1}
    workers = {json.loads(line)["worker"]["pid"] for line in ran.stdout.splitlines()}
    assert page.text("stat-workers") == str(len(workers))  # replacements have lanes too
    assert page.text("stat-tasks") == "24"


@pytest.mark.slow
def test_a_100k_task_report_opens_with_its_figures(tmp_path: Path) -> None:
    errors = {5: TaskError("ValueError", "bad"), 6: TaskError("TaskTimeout", "too long")}
    made = [TaskResult(i, i % 1000 not in errors, i, errors.get(i % 1000),
                       WorkerInfo(f"worker-{i % 16}", 100 + i % 16, 1, "box", "local"), 1,
                       T0 + i * 0.001, T0 + i * 0.001 + 0.015, 0.015)
            for i in range(100_000)]  # fmt: skip
    report = fanout.report(made, tmp_path / "big.html", inputs=range(100_000))
    assert report.stat().st_size <= 20 << 20
    page = Elements(dump_dom(report, budget_ms=60000))
    assert page.text("stat-tasks") == "100,000"
    by_cause = {a["data-cause"]: int(a["data-count"]) for tag, a in page.all if "data-cause" in a}
    assert by_cause == {"ok": 99_800, "raised": 100, "timeout": 100}


RECORD_LABELS = """<script>
window.drawnTexts = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
  window.drawnTexts.push(String(text));
  return fillText.call(this, text, ...rest);
};
</script>"""
SHOW_LABELS = """<script>
const pre = document.createElement("pre");
pre.id = "probe";
pre.textContent = JSON.stringify(window.drawnTexts);
document.body.append(pre);
</script>"""


def test_a_long_host_name_gives_way_and_the_name_and_pid_stay_whole(tmp_path: Path) -> None:
    """Labels cut from the left lost the host ("…er.example.com · worker-1 · 2001")."""
    hosts = ["node-00.cluster.example.com", "node-01.cluster.example.com"]
    made = [TaskResult(i, True, i, None, WorkerInfo(f"fanout-worker-{i}", 2000 + i, 1,
                       hosts[i % 2], "rq"), 1, T0, T0 + 1.0, 1.0) for i in range(4)]  # fmt: skip
    made.append(TaskResult(4, True, 4, None, WorkerInfo("w", 7, 1, "short", "rq"), 1, T0,
                           T0 + 1, 1.0))  # fmt: skip
    report = fanout.report(made, tmp_path / "hosts.html")
    page = tmp_path / "recorded.html"
    data = '<script id="fanout-data"'
    text = report.read_text().replace(data, RECORD_LABELS + data)
    page.write_text(text.replace("</body>", SHOW_LABELS + "</body>"))
    drawn = json.loads(Elements(dump_dom(page)).text("probe"))
    labels = {text.rsplit(" · ", 2)[1]: text for text in drawn if text.count(" · ") == 2}
    first, second = labels["fanout-worker-0"], labels["fanout-worker-1"]
    assert first.endswith(" · fanout-worker-0 · 2000")  # name and pid whole
    assert second.endswith(" · fanout-worker-1 · 2001")
    assert first.split(" · ")[0].endswith("00")  # the hosts still told apart
    assert second.split(" · ")[0].endswith("01")
    assert labels["w"] == "short · w · 7"  # what fits is drawn whole
