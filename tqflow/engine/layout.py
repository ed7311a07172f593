"""Where a batch's files live in storage: every path of a batch folder is named here, and
everything else asks this module.

<batch>/batch.json                       the task functions the batch runs (workers run only
                                         those, or allowed modules: `allowed_modules`)
<batch>/enqueued/<queue>/<step>.json     the keys an enqueue sent to a queue that cannot
                                         deduplicate, so a re-run sends only what is missing
                                         (earlier versions wrote <step>.txt, still read)
<batch>/outputs/<key>.json               the task's return value and what produced it; also the
                                         "done" marker that makes re-runs skip the item
<batch>/shards/<writer>-<n>.json        the same output records, many to a file, as each
                                         worker wrote them (`shards`): what the analysis reads
                                         first, one request per thousand outputs
<batch>/errors/<key>/<n>-<writer>.json   each failed attempt of the task, with its traceback, a
                                         file of its own (attempts failing at once lose none);
                                         earlier versions kept them all in <batch>/errors/<key>.json
<batch>/workers/<report>~<n>.json        what each worker did for the batch (`reports`), its
                                         n-th version: a new name each time it changes
<batch>/workers-digest.json              the reports a reader last read, for the next one
<batch>/fleet/drain.json                 the fleet units the pipeline shrank by: their workers
                                         finish their task and take no more (`drain`)
<batch>/pipelines/<run>.json             when a pipeline run started, and the dead letters
                                         before it, for its retries (`tqflow.fleet.controller`)
<batch>/analysis/results.parquet         the analysis: one row per output
<batch>/analysis/summary.png             and its plot
"""

from __future__ import annotations

from typing import Sequence, overload


def batch_record_path(batch: str) -> str:
    return f"{batch}/batch.json"


def enqueued_prefix(batch: str, queue_name: str) -> str:
    return f"{batch}/enqueued/{queue_name}/"


def outputs_prefix(batch: str) -> str:
    return f"{batch}/outputs/"


def output_path(batch: str, key: str) -> str:
    return f"{outputs_prefix(batch)}{key}.json"


class OutputPaths(Sequence[str]):
    """The output paths of ``keys``, each made when it is read: a listing that only samples
    them (`CloudFilesStorage.list`'s ``expected``) costs no million strings."""

    def __init__(self, batch: str, keys: Sequence[str]) -> None:
        self.batch, self.keys = batch, keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [output_path(self.batch, key) for key in self.keys[index]]
        return output_path(self.batch, self.keys[index])


def key_of_output(path: str) -> str:
    """The item key from an output path (``<batch>/outputs/<key>.json``)."""
    return path.rsplit("/", 1)[-1].removesuffix(".json")


def shards_prefix(batch: str) -> str:
    return f"{batch}/shards/"


def shard_path(batch: str, writer: str, number: int) -> str:
    return f"{shards_prefix(batch)}{writer}-{number:06d}.json"


def errors_prefix(batch: str) -> str:
    return f"{batch}/errors/"


def error_path(batch: str, key: str) -> str:
    """The one error record of ``key`` that versions before per-attempt files wrote."""
    return f"{errors_prefix(batch)}{key}.json"


def error_attempts_prefix(batch: str, key: str) -> str:
    return f"{errors_prefix(batch)}{key}/"


def error_attempt_path(batch: str, key: str, attempt: int, writer: str) -> str:
    return f"{error_attempts_prefix(batch, key)}{attempt:04d}-{writer}.json"


def reports_prefix(batch: str) -> str:
    return f"{batch}/workers/"


def report_name(worker: str, unit: str | None) -> str:
    """A report's name: the worker's (unique), then ``@<unit>`` when it belongs to a fleet
    unit, so that a listing of the reports tells each unit's signs of life (`unit_of_report`)."""
    return worker if unit is None else f"{worker}@{unit}"


def unit_of_report(report: str) -> str | None:
    """The fleet unit a report's name (`report_version`'s first part) names, if any."""
    _, at, unit = report.rpartition("@")
    return unit if at else None


def report_path(batch: str, report: str, version: int) -> str:
    return f"{reports_prefix(batch)}{report}~{version:08d}.json"


def report_version(path: str) -> tuple[str, int]:
    """``(report, version)`` of a report's path; a name without a version (written before
    reports had them) is version 0."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".json")
    report, tilde, version = stem.rpartition("~")
    if not tilde or not version.isdigit():
        return stem, 0
    return report, int(version)


def reports_digest_path(batch: str) -> str:
    return f"{batch}/workers-digest.json"


def drain_path(batch: str) -> str:
    return f"{batch}/fleet/drain.json"


def pipeline_run_path(batch: str, run: str) -> str:
    return f"{batch}/pipelines/{run}.json"


def analysis_table_path(batch: str) -> str:
    return f"{batch}/analysis/results.parquet"


def analysis_plot_path(batch: str) -> str:
    return f"{batch}/analysis/summary.png"
