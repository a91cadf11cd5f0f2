"""`LocalDaemon`: the notes sensor and the automation conditions ticking in this process, with their
requests executed in-process — what `dagster dev`'s daemon does, minus the waiting."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg


@dataclass
class DaemonRun:
    assets: tuple[str, ...]
    partition: str | None
    success: bool
    trigger: str


@dataclass
class LocalDaemon:
    """Ticks `new_notes_sensor` and the automation conditions and executes what they request, in order."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    run_config: dict = field(default_factory=dict)
    log_level: str = "WARNING"
    runs: list[DaemonRun] = field(default_factory=list)
    _sensor_cursor: str | None = None
    _automation_cursor: object = None

    def tick_sensor(self) -> list[DaemonRun]:
        sensor = self.defs.resolve_sensor_def("new_notes_sensor")
        with dg.build_sensor_context(
            instance=self.instance, cursor=self._sensor_cursor, definitions=self.defs, resources=self.defs.resources
        ) as context:
            result = sensor(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    self.instance.delete_dynamic_partition(request.partitions_def_name, key)
        self._sensor_cursor = result.cursor
        job_runs = []
        for request in result.run_requests:
            job = self.defs.resolve_job_def(request.job_name)
            keys = tuple(k.to_user_string() for k in job.asset_layer.executable_asset_keys)
            job_runs.append(self._execute(job, keys, request.partition_key, "new_notes_sensor"))
        return job_runs

    def tick_automation(self) -> list[DaemonRun]:
        result = dg.evaluate_automation_conditions(self.defs, self.instance, cursor=self._automation_cursor)
        self._automation_cursor = result.cursor
        by_partition: dict[str | None, list[dg.AssetKey]] = {}
        for key in self.defs.resolve_asset_graph().get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                by_partition.setdefault(partition, []).append(key)
        job = self.defs.resolve_implicit_global_asset_job_def()
        return [
            self._execute(job, tuple(k.to_user_string() for k in keys), partition, "automation_sensor", keys)
            for partition, keys in sorted(by_partition.items(), key=lambda item: item[0] or "")
        ]

    def settle(self, max_ticks: int = 10) -> list[DaemonRun]:
        """Tick until neither the sensor nor the automation asks for anything more.

        The automation ticks first, as the daemon starts with the UI before any note run finishes.
        """
        executed = [] if self._automation_cursor else self.tick_automation()
        for _ in range(max_ticks):
            step = self.tick_sensor() + self.tick_automation()
            if not step:
                return executed
            executed += step
        raise RuntimeError(f"still requesting runs after {max_ticks} ticks: {executed[-3:]}")

    def _execute(
        self,
        job: dg.JobDefinition,
        assets: tuple[str, ...],
        partition: str | None,
        trigger: str,
        selection: list[dg.AssetKey] | None = None,
    ) -> DaemonRun:
        config = {name: value for name, value in self.run_config.get("ops", {}).items() if name in assets}
        result = job.execute_in_process(
            run_config={"ops": config, "loggers": {"console": {"config": {"log_level": self.log_level}}}},
            instance=self.instance,
            partition_key=partition,
            asset_selection=selection,
            raise_on_error=False,
            tags={"dagster/sensor_name": trigger},
        )
        run = DaemonRun(assets, partition, result.success, trigger)
        self.runs.append(run)
        return run
